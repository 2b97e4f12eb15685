"""Box, crop and heatmap geometry of mmpose's top-down pipeline (PIPELINE.md sections 2 and 4).

Precision follows mmpose 0.x under numpy 1.x literally (section 0): the crop centre and scale
are float32, the affine points are float32, and the heatmap-to-image mapping is float32.
"""

from __future__ import annotations

import cv2
import numpy as np

PIXEL_STD = 200.0


def xyxy_to_xywh(boxes) -> np.ndarray:
    """Boxes (N, 4) x1, y1, x2, y2 -> (N, 4) x, y, w, h with w = x2 - x1, no +1 (section 2.2)."""
    boxes = np.asarray(boxes)
    if not np.issubdtype(boxes.dtype, np.floating):
        boxes = boxes.astype(np.float64)
    boxes = boxes.reshape(-1, 4)
    out = boxes.copy()
    out[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    return out


def box_to_center_scale(
    boxes_xywh,
    aspect_ratio: float = 1.0,
    padding: float = 1.25,
    pixel_std: float = PIXEL_STD,
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4) x, y, w, h -> center (N, 2) float32 and scale (N, 2) float32 (section 2.2).

    mmpose unpacks the box into numpy/Python *scalars*; under numpy 1 every scalar operation
    with a Python number promotes to float64, so the centre and the aspect correction are
    computed in float64 whatever the box dtype (exact for float32 and integer boxes).
    """
    boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    x, y, w, h = boxes.T
    # The centre is taken before the aspect correction.
    center = np.stack([x + w * 0.5, y + h * 0.5], axis=1).astype(np.float32)

    wider = w > aspect_ratio * h
    taller = w < aspect_ratio * h
    h = np.where(wider, w * 1.0 / aspect_ratio, h)
    w = np.where(taller, h * aspect_ratio, w)

    # float32 array divided by a Python float stays float32 in numpy 1 and 2, as does the
    # padding multiplication (the Python number is cast to float32 first).
    scale = np.stack([w, h], axis=1).astype(np.float32) / np.float32(pixel_std)
    scale = scale * np.float32(padding)
    return center, scale


def _rotate(point: np.ndarray, rot_rad: float) -> np.ndarray:
    """Rotate a 2-vector (float64) counter-clockwise by rot_rad about the origin."""
    sn, cs = np.sin(rot_rad), np.cos(rot_rad)
    return np.array([point[0] * cs - point[1] * sn, point[0] * sn + point[1] * cs])


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """b + perp(a - b) with perp((u, v)) = (-v, u): a 90-degree turn about b, float32."""
    direction = a - b
    return b + np.array([-direction[1], direction[0]], dtype=np.float32)


def get_affine_transform(center, scale, rot_deg: float, output_size,
                         inv: bool = False, pixel_std: float = PIXEL_STD) -> np.ndarray:
    """Similarity mapping the box (center (2,), scale (2,)) onto output_size (w, h): (2, 3) float64.

    Section 2.3: only scale[0] is used, the destination's "up" vector uses the output *width*,
    and all six control points are rounded to float32 before cv2.getAffineTransform.
    """
    dst_w, dst_h = output_size
    # An array op with a Python float keeps the scale's dtype (float32 in the pipeline).
    src_w = float((np.asarray(scale) * pixel_std)[0])
    rot_rad = np.pi * rot_deg / 180

    # Source points: the centre + rotated "up" vector are combined in float64, then stored
    # as float32; the third point is derived from the stored float32 points.
    src = np.zeros((3, 2), dtype=np.float32)
    src[0] = np.asarray(center)
    src[1] = np.asarray(center, dtype=np.float64) + _rotate(np.array([0.0, src_w * -0.5]), rot_rad)
    src[2] = _third_point(src[0], src[1])

    dst = np.zeros((3, 2), dtype=np.float32)
    dst[0] = [dst_w * 0.5, dst_h * 0.5]
    dst[1] = np.array([dst_w * 0.5, dst_h * 0.5]) + np.array([0.0, dst_w * -0.5])
    dst[2] = _third_point(dst[0], dst[1])

    if inv:
        return cv2.getAffineTransform(dst, src)
    return cv2.getAffineTransform(src, dst)


def affine_transform_points(points, matrix) -> np.ndarray:
    """Apply a (2, 3) affine matrix to points (..., 2); float64 result of shape (..., 2)."""
    points = np.asarray(points, dtype=np.float64)
    matrix = np.asarray(matrix, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def heatmap_to_image(coords, center, scale, heatmap_size,
                     pixel_std: float = PIXEL_STD) -> np.ndarray:
    """Heatmap coords (N, K, 2) -> image pixels (N, K, 2) float32 (section 4 step 4, non-UDP).

    center, scale: (N, 2), cast to float32. heatmap_size: (w, h). Coordinates of -1 (no
    positive peak) are mapped too, exactly like mmpose.
    """
    coords = np.asarray(coords, dtype=np.float32)
    center = np.asarray(center, dtype=np.float32).reshape(-1, 1, 2)
    size = np.asarray(scale, dtype=np.float32).reshape(-1, 1, 2) * np.float32(pixel_std)
    # mmpose divides a float32 *scalar* by the heatmap size, which numpy 1 does in float64;
    # the quotient is then rounded to float32 when it multiplies the float32 coordinates.
    step = (size.astype(np.float64) / np.asarray(heatmap_size, dtype=np.float64)).astype(np.float32)
    # float32 throughout, in mmpose's order: (x * step + c) - S * 0.5.
    return (coords * step + center) - size * np.float32(0.5)
