"""Open the ONNX model with the requested execution providers and say honestly which one runs.

onnxruntime-gpu lists CUDA as *available* even when it cannot load it, and then silently
runs on CPU; only `session.get_providers()` tells the truth, so that is all we report.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.checksums import file_sha256
from service.pipeline.config import METADATA_PREFIX, PipelineConfig

log = logging.getLogger("service.engine")

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider")


class ModelLoadError(RuntimeError):
    """The model file is missing, unreadable, or does not fit the landmark contract."""


@dataclass
class ModelInfo:
    path: Path
    sha256: str
    config: PipelineConfig
    metadata: dict[str, str]
    input_name: str
    output_name: str
    requested_providers: list[str]
    active_providers: list[str]
    name: str = "unknown"
    precision: str = "fp32"
    trained: bool | None = None  # None: the file does not say
    source_checkpoint_sha256: str = ""
    golden: dict | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def provider(self) -> str:
        return self.active_providers[0] if self.active_providers else "none"

    @property
    def on_gpu(self) -> bool:
        return self.provider in GPU_PROVIDERS

    def meta(self, key: str, default=None):
        raw = self.metadata.get(METADATA_PREFIX + key)
        if raw is None:
            return default
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw


def provider_options(name: str, device_id: int, max_batch: int, input_name: str,
                     row_shape: tuple[int, ...], cache_dir: Path) -> tuple[str, dict]:
    """(provider, options); TensorRT's optimisation profile names the model's own input."""
    if name == "CUDAExecutionProvider":
        return name, {"device_id": device_id, "cudnn_conv_algo_search": "EXHAUSTIVE"}
    if name == "TensorrtExecutionProvider":
        dims = "x".join(str(d) for d in row_shape)
        shape = lambda n: f"{input_name}:{n}x{dims}"  # noqa: E731
        return name, {
            "device_id": device_id,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir),
            "trt_profile_min_shapes": shape(1),
            "trt_profile_opt_shapes": shape(max_batch),
            "trt_profile_max_shapes": shape(max_batch),
        }
    return name, {}


def session_options(threads: int = 0, quiet: bool = False, spinning: bool = True) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # quiet: a provider that cannot load is expected (auto mode on a CPU-only host); say it
    # once ourselves instead of onnxruntime's red error lines.
    options.log_severity_level = 4 if quiet else 3
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        # Idle intra-op threads sleep instead of spin-waiting for the next run: a spinning
        # pool burns a core between batches that the request threads need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def create_session(model: Path | bytes, providers: list[str], device_id: int = 0, max_batch: int = 32,
                   threads: int = 0, quiet: bool = False, cache_dir: Path | None = None,
                   spinning: bool = True) -> ort.InferenceSession:
    """A session on the first of `providers` this build has (CPU if none); check
    `get_providers()` for what actually loaded."""
    options = session_options(threads, quiet, spinning)
    source = model if isinstance(model, bytes) else str(model)
    available = ort.get_available_providers()
    wanted = [p for p in providers if p in available] or ["CPUExecutionProvider"]
    input_name, row_shape = "input", ()
    if "TensorrtExecutionProvider" in wanted:
        # TensorRT's optimisation profile names the model's own input and row shape.
        first = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"]).get_inputs()[0]
        input_name = first.name
        row_shape = tuple(d if isinstance(d, int) else 1 for d in first.shape[1:])
    chosen = [provider_options(p, device_id, max_batch, input_name, row_shape,
                               cache_dir or Path(".trt_cache")) for p in wanted]
    if quiet:
        ort.set_default_logger_severity(4)
    try:
        return ort.InferenceSession(source, options, providers=chosen)
    finally:
        if quiet:
            ort.set_default_logger_severity(2)


def open_session(path: Path, providers: list[str], device_id: int = 0, max_batch: int = 32,
                 threads: int = 0, auto: bool = False) -> tuple[ort.InferenceSession, ModelInfo]:
    """Open the landmark model. auto: GPU if one is usable, else CPU, with no error."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(
            f"model file not found: {path}. Run `make model` (official checkpoint) or "
            "`make model-demo` (untrained), or set LANDMARKS_MODEL_PATH."
        )
    if path.is_dir():
        raise ModelLoadError(f"LANDMARKS_MODEL_PATH is a directory, not an ONNX file: {path}")
    try:
        metadata = dict(ort.InferenceSession(str(path), session_options(threads),
                                             providers=["CPUExecutionProvider"])
                        .get_modelmeta().custom_metadata_map)
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise ModelLoadError(f"cannot load {path} as an ONNX model: {str(exc)[:300]}") from None
    try:
        config = PipelineConfig.from_metadata(metadata)
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"{path}: unusable landmarks metadata: {exc}") from None
    available = ort.get_available_providers()
    skipped = [p for p in providers if p not in available]
    if skipped and not auto:
        log.warning("execution providers not in this onnxruntime build: %s", skipped)
    try:
        session = create_session(path, providers, device_id, max_batch, threads, quiet=auto,
                                 cache_dir=path.parent / ".trt_cache")
    except Exception as exc:
        raise ModelLoadError(f"cannot create a session for {path}: {str(exc)[:300]}") from None
    info = ModelInfo(
        path=path, sha256=file_sha256(path), config=config, metadata=metadata,
        input_name=session.get_inputs()[0].name, output_name=session.get_outputs()[0].name,
        requested_providers=list(providers), active_providers=session.get_providers(),
    )
    check_io_contract(session, config, path)
    info.name = info.meta("model_name", path.stem)
    info.precision = info.meta("precision", "fp32")
    info.trained = info.meta("trained", None)
    info.source_checkpoint_sha256 = info.meta("source_checkpoint_sha256", "")
    info.golden = info.meta("golden", None)
    if info.trained is False:
        info.warnings.append(
            "UNTRAINED MODEL: this ONNX file has random weights (exported with --random-init); "
            "its landmarks are meaningless"
        )
    wanted_gpu = [p for p in providers if p in GPU_PROVIDERS]
    if auto:
        if info.on_gpu:
            log.info("providers auto: a GPU is usable, running on %s", info.provider)
        else:
            log.warning("providers auto: no usable GPU in this onnxruntime build/host, running on %s "
                        "(set LANDMARKS_PROVIDERS=cuda,cpu to demand CUDA)", info.provider)
    elif wanted_gpu and not info.on_gpu:
        log.error(
            "GPU REQUESTED BUT NOT IN USE: asked for %s, onnxruntime is running on %s "
            "(available in this build: %s). Check the CUDA/cuDNN libraries and the GPU.",
            providers, info.active_providers, available,
        )
    return session, info


def check_io_contract(session: ort.InferenceSession, config: PipelineConfig, path: Path) -> None:
    """Input [N,3,H,W] float32 -> output [N,K,h,w], with H, W, K, h, w as the metadata says."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise ModelLoadError(f"{path}: expected one input and one output, got "
                             f"{len(inputs)} inputs and {len(outputs)} outputs")
    width, height = config.input_size
    hm_w, hm_h = config.heatmap_size
    want_in = [None, 3, height, width]
    want_out = [None, config.num_keypoints, hm_h, hm_w]
    for what, shape, want in (("input", inputs[0].shape, want_in), ("output", outputs[0].shape, want_out)):
        fixed = [d if isinstance(d, int) else None for d in shape]
        if len(fixed) != 4 or any(w is not None and f is not None and f != w
                                  for f, w in zip(fixed[1:], want[1:])):
            raise ModelLoadError(f"{path}: {what} shape {shape} does not match "
                                 f"[N, {', '.join(map(str, want[1:]))}]")
    if inputs[0].type != "tensor(float)":
        raise ModelLoadError(f"{path}: input type {inputs[0].type}, expected tensor(float)")


def run_session(session: ort.InferenceSession, info: ModelInfo, rows: np.ndarray) -> np.ndarray:
    """One synchronous run of the landmark model: rows in, heatmaps out (the evaluator's path;
    the service's batcher calls it too)."""
    return session.run([info.output_name], {info.input_name: rows})[0]
