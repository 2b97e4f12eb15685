"""Overlay rendering for `/landmarks/render`: face boxes, landmarks and detector keypoints.

Pure NumPy/OpenCV on RGB uint8 arrays. Nothing is drawn in place: `draw_faces` returns a new
array, so pixels away from the drawings keep their exact input values (a PNG of the result
differs from the input only where something was drawn).

Palette (RGB), one colour per WFLW group, chosen to stay apart from each other and from
skin tones:

| what               | colour            | mark                         |
|--------------------|-------------------|------------------------------|
| face box           | (255, 255, 255)   | rectangle outline            |
| contour            | (0, 200, 255)     | filled disc                  |
| brows              | (255, 140, 0)     | filled disc                  |
| nose               | (255, 0, 255)     | filled disc                  |
| eyes               | (0, 255, 0)       | filled disc                  |
| mouth              | (255, 0, 0)       | filled disc                  |
| pupils             | (255, 255, 0)     | filled disc                  |
| point in no group  | (0, 255, 128)     | filled disc                  |
| detector keypoint  | (40, 90, 255)     | "x" cross, larger than discs |

Detector keypoints are drawn before the landmarks, so where the two overlap the landmark
stays visible on top.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

BOX_COLOR: tuple[int, int, int] = (255, 255, 255)
GROUP_COLORS: dict[str, tuple[int, int, int]] = {
    "contour": (0, 200, 255),
    "brows": (255, 140, 0),
    "nose": (255, 0, 255),
    "eyes": (0, 255, 0),
    "mouth": (255, 0, 0),
    "pupils": (255, 255, 0),
}
UNGROUPED_COLOR: tuple[int, int, int] = (0, 255, 128)
DETECTOR_KEYPOINT_COLOR: tuple[int, int, int] = (40, 90, 255)

MEDIA_TYPES: dict[str, str] = {"jpeg": "image/jpeg", "png": "image/png"}

# OpenCV draws with sub-pixel precision when coordinates are fixed point with this many
# fractional bits; coordinates are clipped first so the fixed-point values fit in int32.
_SHIFT = 4
_COORD_LIMIT = 1 << 20


def fit_within(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Shrink `rgb` `[H, W, C]` so its long side is at most `max_side`, keeping the aspect.

    Returns `(image, factor)`: the input itself and 1.0 when it already fits, otherwise a
    new array of size `round(W * factor) x round(H * factor)` (INTER_AREA, the resampling
    that does not alias when shrinking) with `factor = max_side / max(H, W)`. Multiply
    image coordinates by `factor` to place them on the result.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    height, width = rgb.shape[:2]
    long_side = max(height, width)
    if long_side <= max_side:
        return rgb, 1.0
    factor = max_side / long_side
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), factor


def _fixed(points: np.ndarray) -> np.ndarray:
    """Float pixel coordinates `[..., 2]` -> int32 fixed point for OpenCV's `shift`."""
    clipped = np.clip(points, -_COORD_LIMIT, _COORD_LIMIT)
    return np.round(clipped * (1 << _SHIFT)).astype(np.int32)


def _point_colors(num_points: int, keypoint_groups: Mapping[str, np.ndarray] | None) -> list:
    colors = [UNGROUPED_COLOR] * num_points
    for group, positions in (keypoint_groups or {}).items():
        color = GROUP_COLORS.get(group, UNGROUPED_COLOR)
        for k in np.asarray(positions, dtype=np.int64).ravel():
            if 0 <= k < num_points:
                colors[k] = color
    return colors


def draw_faces(
    rgb: np.ndarray,
    boxes: np.ndarray,
    landmarks: np.ndarray,
    keypoint_groups: Mapping[str, np.ndarray] | None = None,
    detector_keypoints: Sequence[np.ndarray | None] | None = None,
    factor: float = 1.0,
) -> np.ndarray:
    """Draw every face on a copy of `rgb` and return the copy.

    rgb: `[H, W, 3]` uint8, RGB. boxes: `[F, 4]` xywh in source-image pixels.
    landmarks: `[F, K, 2]` (x, y) in source-image pixels; non-finite points are skipped.
    keypoint_groups: group name -> positions along K (e.g. `point_set_groups(...)`); points
    in no listed group get `UNGROUPED_COLOR`. detector_keypoints: per face a `[5, 2]` array
    or None (client-given boxes), or None for all faces. factor: scale from source-image
    pixels to `rgb` pixels (the factor `fit_within` returned).
    Mark sizes follow the face size, so small faces are not buried under their points.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an [H, W, 3] uint8 image, got {rgb.shape} {rgb.dtype}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.size == 0:
        landmarks = landmarks.reshape(len(boxes), 0, 2)
    if landmarks.ndim != 3 or landmarks.shape[2] != 2 or len(landmarks) != len(boxes):
        raise ValueError(f"landmarks {landmarks.shape} do not match {len(boxes)} boxes of [K, 2]")
    if detector_keypoints is None:
        detector_keypoints = [None] * len(boxes)
    if len(detector_keypoints) != len(boxes):
        raise ValueError(f"{len(detector_keypoints)} detector keypoint entries for {len(boxes)} boxes")

    out = rgb.copy()
    height, width = out.shape[:2]
    line = max(1, round(max(height, width) / 600))
    colors = _point_colors(landmarks.shape[1], keypoint_groups)
    one = 1 << _SHIFT
    for box, points, detected in zip(boxes, landmarks, detector_keypoints):
        box = box * factor
        if not np.isfinite(box).all():
            continue
        face_size = max(min(box[2], box[3]), 1.0)
        radius = max(2.0, face_size / 90)
        x0, y0 = _fixed(box[:2])
        x1, y1 = _fixed(box[:2] + box[2:])
        cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), BOX_COLOR, line,
                      cv2.LINE_AA, _SHIFT)
        if detected is not None:
            arm = round(radius * 2.5 * one)
            for x, y in _fixed(np.asarray(detected, np.float64).reshape(-1, 2) * factor):
                x, y = int(x), int(y)
                cv2.line(out, (x - arm, y - arm), (x + arm, y + arm), DETECTOR_KEYPOINT_COLOR,
                         line, cv2.LINE_AA, _SHIFT)
                cv2.line(out, (x - arm, y + arm), (x + arm, y - arm), DETECTOR_KEYPOINT_COLOR,
                         line, cv2.LINE_AA, _SHIFT)
        fixed_radius = round(radius * one)
        for point, color in zip(points * factor, colors):
            if not np.isfinite(point).all():
                continue
            x, y = _fixed(point)
            cv2.circle(out, (int(x), int(y)), fixed_radius, color, cv2.FILLED, cv2.LINE_AA, _SHIFT)
    return out


def encode_image(rgb: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    """Encode an RGB uint8 `[H, W, 3]` image as `jpeg` (with `quality` 1-100) or lossless `png`."""
    if fmt not in MEDIA_TYPES:
        raise ValueError(f"unknown image format {fmt!r}; expected one of {sorted(MEDIA_TYPES)}")
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    if fmt == "jpeg":
        if not 1 <= quality <= 100:
            raise ValueError(f"jpeg quality must be 1..100, got {quality}")
        ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    else:
        ok, buffer = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {fmt}")
    return buffer.tobytes()
