"""Service settings: environment variables with the prefix `LANDMARKS_` (the README lists them).

Every limit has a safe default; `python -m service`, the Docker image, compose and the
Kubernetes manifests all read these same variables.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LANDMARKS_", extra="ignore", protected_namespaces=())

    model_path: Path = Path("models/hrnetv2_w18_wflw_dark.onnx")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # auto: CUDA when this onnxruntime build finds a GPU, else CPU (said once, no error).
    # A comma list demands providers, first preferred: cuda,cpu | tensorrt,cuda,cpu | cpu;
    # a demanded GPU provider that does not load is logged as an error.
    providers: str = "auto"
    device_id: int = Field(0, ge=0)
    # If true, running on anything but a GPU provider keeps /readyz at 503.
    require_gpu: bool = False
    flip_test: bool = True  # mmpose's published 3.98 NME needs it
    max_batch_size: int = Field(32, ge=1, le=1024)  # network inputs per session.run
    # Extra wait for a fuller batch. 0: dispatch at once; batches still fill up with whatever
    # queued while the model was busy (Triton's default).
    batch_timeout_ms: float = Field(0.0, ge=0.0, le=1000.0)
    max_queue: int = Field(512, ge=1)  # network inputs waiting; beyond it 503
    request_timeout_s: float = Field(10.0, gt=0.0)
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(50_000_000, ge=1)  # checked from the header before decoding
    max_faces: int = Field(64, ge=1)
    api_key: SecretStr | None = None
    log_level: str = "INFO"
    cors_origins: str = ""  # comma list; empty = CORS off
    # Intra-op threads for onnxruntime (0 = its default, one per physical core).
    ort_threads: int = Field(0, ge=0)
    # Let onnxruntime's idle intra-op threads spin-wait between runs (lower latency for a CPU
    # network, at the cost of a busy core). Unset: off on a GPU, where the CPU's job is to
    # feed the device, on for the CPU provider.
    ort_spinning: bool | None = None
    # Normalisation and flip test inside the ONNX graph (uint8 crops in, merged heatmaps out).
    # Unset: on with a GPU provider (less data over PCIe, the work on the device), off on the
    # CPU provider, where the host path measured cheaper (bench/RESULTS.md). Bit-identical.
    preprocess_in_graph: bool | None = None
    # Seconds uvicorn waits for in-flight requests after SIGTERM.
    shutdown_grace_s: float = Field(30.0, ge=0.0)
    # Max landmark deviation (px on a 256 px crop) allowed by the start-up golden self-check.
    golden_tolerance_px: float = Field(0.5, gt=0.0)
    # Serving processes under one supervisor (see README "Sizing workers").
    workers: int = Field(1, ge=1, le=64)
    # A connection that has not delivered its whole request within this many seconds is closed.
    read_timeout_s: float = Field(30.0, gt=0.0)
    # Face detection when a request has no boxes: retinaface | none (whole image is one face).
    detector: str = "retinaface"
    detector_path: Path = Path("models/retinaface_mnet025.onnx")
    detect_threshold: float = Field(0.5, ge=0.0, le=1.0)
    detect_max_side: int = Field(640, ge=32, le=4096)
    # /landmarks/render output is scaled down beyond this long side (pixels).
    render_max_side: int = Field(2048, ge=64, le=16384)

    @field_validator("detector")
    @classmethod
    def _known_detector(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in ("retinaface", "none"):
            raise ValueError("LANDMARKS_DETECTOR must be 'retinaface' or 'none'")
        return value

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: str) -> str:
        names = [p.strip().lower() for p in value.split(",") if p.strip()]
        if names == ["auto"]:
            return "auto"
        if not names:
            raise ValueError("LANDMARKS_PROVIDERS needs at least one provider, e.g. 'cuda,cpu'")
        unknown = [n for n in names if n not in PROVIDER_ALIASES and not n.endswith("executionprovider")]
        if unknown:
            raise ValueError(f"unknown providers {unknown}; use {sorted(PROVIDER_ALIASES)}")
        return ",".join(names)

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.upper()
        if value not in ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"):
            raise ValueError(f"unknown log level {value}")
        return value

    @property
    def providers_auto(self) -> bool:
        return self.providers == "auto"

    @property
    def provider_list(self) -> list[str]:
        """Full onnxruntime provider names, in preference order (auto: CUDA, then CPU)."""
        if self.providers_auto:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        out = []
        for name in self.providers.split(","):
            full = PROVIDER_ALIASES.get(name)
            if full is None:  # a full name given verbatim, e.g. 'openvinoexecutionprovider'
                full = next(
                    (p for p in _all_ort_providers() if p.lower() == name), name
                )
            out.append(full)
        return out

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def cores_per_worker(self) -> int:
        """This worker's share of the cores the service may use (at least 1)."""
        return max(1, available_cores() // self.workers)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers' cpusets narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _all_ort_providers() -> list[str]:
    import onnxruntime

    return onnxruntime.get_all_providers()
