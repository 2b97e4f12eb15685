"""Face detector pre- and post-processing (RetinaFace, MobileNet-0.25), pure NumPy + OpenCV resize.

The network (see docs/DETECTOR.md for its origin) takes one BGR image minus the mean
(104, 117, 123), NCHW float32, any height and width, and returns for every prior (anchor):

    loc        [1, P, 4]   box offsets (dx, dy, dw, dh), encoded against the prior
    conf       [1, P, 2]   (background, face) probabilities, already softmaxed in the graph
    landmarks  [1, P, 10]  five points (dx, dy) x 5, encoded against the prior

Priors come from three feature maps (strides 8, 16, 32; two square sizes each: 16/32,
64/128, 256/512 px), laid out stride by stride, then row by row, column by column, size by
size. Coordinates in this module are *pixels of the detector input* until `postprocess`
divides by the resize factor; all boxes use continuous coordinates (pixel i spans [i, i + 1]),
so a box's width is x2 - x1 with no +1.

Flow: `preprocess_for_detector` (downscale so the long side is at most `max_side`, pad to a
multiple of 32) -> session.run -> `postprocess` (decode, threshold, NMS, back to image
pixels) -> `Detections`. Detector boxes are not the boxes the landmark model was trained on:
`detector_boxes_to_center_scale` maps them with the calibrated rule of `DetectorCalibration`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .config import PipelineConfig
from .geometry import box_to_center_scale

STRIDES: tuple[int, ...] = (8, 16, 32)
PRIOR_SIZES: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
VARIANCES: tuple[float, float] = (0.1, 0.2)
MEAN_BGR: tuple[float, float, float] = (104.0, 117.0, 123.0)
# The network halves the resolution five times; padding the input to a multiple of 32 makes
# every feature map exactly input / stride and keeps the set of input shapes small.
INPUT_MULTIPLE = 32
# Candidates kept (by score) before NMS: bounds NMS cost on a crowd at a low threshold.
PRE_NMS_TOP_K = 5000
DEFAULT_NMS_IOU = 0.4
KEYPOINT_NAMES: tuple[str, ...] = ("eye_image_left", "eye_image_right", "nose_tip",
                                   "mouth_image_left", "mouth_image_right")

CALIBRATION_FILE = Path(__file__).parent / "data" / "detector_calibration.json"


@dataclass
class Detections:
    """Faces found in one image, sorted by score (highest first).

    boxes: [D, 4] float64 x, y, w, h in image pixels (not clipped to the image: a face cut by
    the border keeps its full extent). scores: [D] float64 in [0, 1]. keypoints: [D, 5, 2]
    float64 image pixels, in the order of KEYPOINT_NAMES (image-left eye, image-right eye, nose
    tip, image-left and image-right mouth corners).
    """

    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))

    def take(self, index) -> Detections:
        """The detections at `index` (an int array or slice), in that order."""
        return Detections(self.boxes[index], self.scores[index], self.keypoints[index])


# --------------------------------------------------------------------------- priors and decoding


def prior_boxes(height: int, width: int) -> np.ndarray:
    """Priors `[P, 4]` float64 (cx, cy, w, h) in pixels of a `height` x `width` detector input.

    For each stride s: a grid of ceil(height / s) rows by ceil(width / s) columns, centres at
    ((col + 0.5) s, (row + 0.5) s), each cell carrying its square sizes in order. This is the
    network's output order (P = sum over strides of rows * cols * 2).
    """
    if height < 1 or width < 1:
        raise ValueError(f"detector input must be at least 1x1, got {height}x{width}")
    parts = []
    for stride, sizes in zip(STRIDES, PRIOR_SIZES):
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        cy, cx = np.meshgrid((np.arange(rows) + 0.5) * stride, (np.arange(cols) + 0.5) * stride,
                             indexing="ij")
        centres = np.stack([cx.ravel(), cy.ravel()], axis=1)  # [rows*cols, 2], row-major
        grid = np.empty((rows * cols, len(sizes), 4))
        grid[:, :, :2] = centres[:, None, :]
        grid[:, :, 2:] = np.asarray(sizes, dtype=np.float64)[None, :, None]
        parts.append(grid.reshape(-1, 4))
    return np.concatenate(parts)


def decode_boxes(loc, priors, variances: Sequence[float] = VARIANCES) -> np.ndarray:
    """Regression `[P, 4]` (dx, dy, dw, dh) + priors `[P, 4]` (cx, cy, w, h) -> boxes `[P, 4]`
    float64 (x1, y1, x2, y2) in the priors' units.

    centre = prior centre + d * variance[0] * prior size; size = prior size * exp(d * variance[1]).
    """
    loc = np.asarray(loc, dtype=np.float64).reshape(-1, 4)
    priors = np.asarray(priors, dtype=np.float64).reshape(-1, 4)
    centre = priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:]
    size = priors[:, 2:] * np.exp(loc[:, 2:] * variances[1])
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1)


def decode_landmarks(landmarks, priors, variances: Sequence[float] = VARIANCES) -> np.ndarray:
    """Regression `[P, 10]` (dx, dy) x 5 + priors `[P, 4]` -> points `[P, 5, 2]` float64,
    each = prior centre + d * variance[0] * prior size (the prior's own units)."""
    offsets = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
    priors = np.asarray(priors, dtype=np.float64).reshape(-1, 1, 4)
    return priors[:, :, :2] + offsets * variances[0] * priors[:, :, 2:]


def nms(boxes_xyxy, scores, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices (int64) of the kept boxes, highest score first.

    A box is dropped when its IoU with an already kept, higher-scoring box is greater than
    `iou_threshold`. Areas are continuous (w = x2 - x1); ties in score keep the lower index
    first (stable sort). boxes_xyxy: [N, 4]; scores: [N].
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    x1, y1, x2, y2 = boxes.T
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        inter_w = np.clip(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0, None)
        inter_h = np.clip(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0, None)
        inter = inter_w * inter_h
        union = areas[best] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def box_iou(a_xyxy, b_xyxy) -> np.ndarray:
    """IoU matrix `[A, B]` of two box sets (x1, y1, x2, y2), continuous areas."""
    a = np.asarray(a_xyxy, dtype=np.float64).reshape(-1, 1, 4)
    b = np.asarray(b_xyxy, dtype=np.float64).reshape(1, -1, 4)
    inter_w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    inter_h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


# --------------------------------------------------------------------------- image in, faces out


def preprocess_for_detector(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 `[H, W, 3]` -> (network input `[1, 3, h, w]` float32, scale `[2]` float64).

    The image is shrunk (never enlarged) so its long side is at most `max_side` (area
    interpolation), converted to BGR minus MEAN_BGR, and padded at the bottom and right with
    zeros (= the mean colour) to a multiple of 32. `scale` = (sx, sy), detector-input pixels per
    image pixel on each axis (the resized size is rounded, so the two can differ slightly);
    image coordinate = detector coordinate / scale. Detection cost is therefore bounded by
    max_side whatever the image size (plus the resize).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {rgb.dtype} {rgb.shape}")
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    height, width = rgb.shape[:2]
    if height < 1 or width < 1:
        raise ValueError(f"empty image {height}x{width}")
    factor = min(1.0, max_side / max(height, width))
    new_w = max(1, round(width * factor))
    new_h = max(1, round(height * factor))
    if (new_w, new_h) != (width, height):
        rgb = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA)
    pad_h = -new_h % INPUT_MULTIPLE
    pad_w = -new_w % INPUT_MULTIPLE
    out = np.zeros((1, 3, new_h + pad_h, new_w + pad_w), dtype=np.float32)
    for channel, (source, mean) in enumerate(zip((2, 1, 0), MEAN_BGR)):  # RGB -> BGR planes
        np.subtract(rgb[:, :, source], np.float32(mean), out=out[0, channel, :new_h, :new_w],
                    dtype=np.float32)
    scale = np.array([new_w / width, new_h / height], dtype=np.float64)
    return out, scale


def postprocess(outputs: Sequence[np.ndarray], input_shape: Sequence[int], scale,
                threshold: float, nms_iou: float = DEFAULT_NMS_IOU,
                top_k: int = PRE_NMS_TOP_K) -> Detections:
    """Network outputs (loc `[1, P, 4]`, conf `[1, P, 2]`, landmarks `[1, P, 10]`, in the
    model's output order) of an input of shape `input_shape` (`[1, 3, h, w]` or `(h, w)`)
    -> Detections in image pixels.

    Keeps priors with face probability >= threshold, the `top_k` best of those, then greedy
    NMS at `nms_iou`; divides by `scale` (a float or (sx, sy) from preprocess_for_detector).
    """
    loc, conf, landmarks = (np.asarray(o) for o in outputs)
    height, width = (int(v) for v in tuple(input_shape)[-2:])
    priors = prior_boxes(height, width)
    if loc.reshape(-1, 4).shape[0] != len(priors):
        raise ValueError(f"detector returned {loc.reshape(-1, 4).shape[0]} boxes for a "
                         f"{height}x{width} input, expected {len(priors)} priors")
    face_prob = conf.reshape(-1, 2)[:, 1].astype(np.float64)
    candidates = np.flatnonzero(face_prob >= threshold)
    if candidates.size > top_k:
        candidates = candidates[np.argsort(-face_prob[candidates], kind="stable")[:top_k]]
    if candidates.size == 0:
        return Detections.empty()
    boxes = decode_boxes(loc.reshape(-1, 4)[candidates], priors[candidates])
    points = decode_landmarks(landmarks.reshape(-1, 10)[candidates], priors[candidates])
    scores = face_prob[candidates]
    keep = nms(boxes, scores, nms_iou)
    factor = np.broadcast_to(np.asarray(scale, dtype=np.float64), (2,))
    boxes = boxes[keep] / np.tile(factor, 2)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return Detections(xywh, np.clip(scores[keep], 0.0, 1.0), points[keep] / factor)


# --------------------------------------------------------------------------- calibration


@dataclass
class DetectorCalibration:
    """Rule mapping a detector box (x, y, w, h) to the face box the landmark model expects.

    The landmark model was trained on WFLW's own crops: a square of side `scale * 200` px
    (before the 1.25 padding) centred on the annotation's `center`. For a detector box:

        center = (x + (0.5 + center_offset_x) * w, y + (0.5 + center_offset_y) * h)
        side   = size_factor * sqrt(w * h)

    and the square (center, side) goes through the landmark pipeline's own box_to_center_scale
    (padding, aspect ratio, pixel_std from the model's PipelineConfig). The numbers are fitted
    by `model_export.detector.fit_calibration` (medians over matched faces).
    """

    center_offset_x: float = 0.0
    center_offset_y: float = 0.0
    size_factor: float = 1.0
    fitted_on: str = "identity (not fitted)"
    faces: int = 0
    detector_sha256: str = ""
    max_side: int = 640
    residuals: dict = field(default_factory=dict)

    def validate(self) -> None:
        values = (self.center_offset_x, self.center_offset_y, self.size_factor)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise ValueError(f"detector calibration values must be finite numbers, got {values}")
        if not 0.1 <= self.size_factor <= 10 or max(map(abs, values[:2])) > 1:
            raise ValueError(f"implausible detector calibration {values}: offsets must be within "
                             "+-1 box size and the size factor within 0.1..10")

    @classmethod
    def load(cls, path: str | Path | None = None) -> DetectorCalibration:
        """Read a calibration JSON (default: the one packaged with the service)."""
        path = Path(path) if path is not None else CALIBRATION_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"detector calibration file not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc.msg})") from None
        known = {f for f in cls.__dataclass_fields__}
        if not isinstance(data, dict) or "size_factor" not in data:
            raise ValueError(f"{path}: expected an object with center_offset_x, center_offset_y, "
                             "size_factor")
        calibration = cls(**{k: v for k, v in data.items() if k in known})
        try:
            calibration.validate()
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        return calibration

    def save(self, path: str | Path) -> Path:
        self.validate()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path


def detector_boxes_to_face_boxes(boxes_xywh, calibration: DetectorCalibration) -> np.ndarray:
    """Detector boxes `[F, 4]` xywh -> calibrated square face boxes `[F, 4]` xywh float64
    (side = the WFLW face size, before the landmark crop's padding)."""
    boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    x, y, w, h = boxes.T
    cx = x + (0.5 + calibration.center_offset_x) * w
    cy = y + (0.5 + calibration.center_offset_y) * h
    side = calibration.size_factor * np.sqrt(np.clip(w, 0, None) * np.clip(h, 0, None))
    return np.stack([cx - side / 2, cy - side / 2, side, side], axis=1)


def detector_boxes_to_center_scale(boxes_xywh, calibration: DetectorCalibration,
                                   config: PipelineConfig) -> tuple[np.ndarray, np.ndarray]:
    """Detector boxes `[F, 4]` xywh -> center `[F, 2]` float32, scale `[F, 2]` float32, in the
    convention of `service.pipeline.faces.centers_and_scales` (pixel_std units, padding
    included), ready for `faces.prepare`."""
    face_boxes = detector_boxes_to_face_boxes(boxes_xywh, calibration)
    return box_to_center_scale(face_boxes, config.aspect_ratio, config.bbox_padding,
                               config.pixel_std)
