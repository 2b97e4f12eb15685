"""Reference DARK decode: a plain per-keypoint loop written from PIPELINE.md section 4.

Deliberately naive (Python loops over faces and keypoints, one cv2.GaussianBlur per map,
one np.linalg.inv per keypoint) so it can serve as an oracle for the vectorised
`service.pipeline.dark.decode_heatmaps` and as a baseline in benchmarks. numpy 1.x's
float32/float64 mixing (section 0) is spelled out with explicit conversions.
"""

from __future__ import annotations

import cv2
import numpy as np


def _peak(hm: np.ndarray) -> tuple[float, float, np.float32]:
    """Section 4.1: first row-major maximum of one (H, W) map; (-1, -1) unless max > 0."""
    width = hm.shape[1]
    flat = hm.reshape(-1)
    idx = int(np.argmax(flat))
    maxval = np.float32(np.max(flat))
    if maxval > 0:
        return float(np.float32(idx % width)), float(np.float32(idx // width)), maxval
    return -1.0, -1.0, maxval


def _modulated_log_map(hm: np.ndarray, kernel: int) -> np.ndarray:
    """Section 4.2 for one (H, W) map: padded blur, rescale to the original max, log."""
    border = (kernel - 1) // 2
    h, w = hm.shape
    m0 = np.max(hm)
    padded = np.zeros((h + 2 * border, w + 2 * border), dtype=np.float32)
    padded[border:-border, border:-border] = hm
    padded = cv2.GaussianBlur(padded, (kernel, kernel), 0)
    block = padded[border:-border, border:-border].copy()
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.float32(m0) / np.float32(np.max(block))
        block = (block * np.float32(ratio)).astype(np.float32)
        return np.log(np.maximum(block, np.float32(1e-10))).astype(np.float32)


def _taylor_one(L: np.ndarray, x: float, y: float) -> tuple[float, float]:
    """Section 4.3 for one keypoint; returns the (float32-valued) refined (x, y)."""
    h, w = L.shape
    px, py = int(x), int(y)
    if not (1 < px < w - 2 and 1 < py < h - 2):
        return x, y

    def a(r: int, c: int) -> np.float32:
        return np.float32(L[r, c])

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        dx = 0.5 * float(np.float32(a(py, px + 1) - a(py, px - 1)))
        dy = 0.5 * float(np.float32(a(py + 1, px) - a(py - 1, px)))
        dxx = 0.25 * ((float(a(py, px + 2)) - 2.0 * float(a(py, px))) + float(a(py, px - 2)))
        dyy = 0.25 * ((float(a(py + 2, px)) - 2.0 * float(a(py, px))) + float(a(py - 2, px)))
        s = np.float32(a(py + 1, px + 1) - a(py - 1, px + 1))
        s = np.float32(s - a(py + 1, px - 1))
        s = np.float32(s + a(py - 1, px - 1))
        dxy = 0.25 * float(s)
        det = np.float64(dxx) * np.float64(dyy) - np.float64(dxy) ** 2
        if det == 0:
            return x, y
        hessian = np.array([[dxx, dxy], [dxy, dyy]], dtype=np.float64)
        derivative = np.array([[dx], [dy]], dtype=np.float64)
        try:
            inverse = np.linalg.inv(hessian)
        except np.linalg.LinAlgError:  # mmpose would crash here; treat as "no step"
            return x, y
        offset = -inverse @ derivative
        return (float(np.float32(x + float(offset[0, 0]))),
                float(np.float32(y + float(offset[1, 0]))))


def _to_image(x: float, y: float, center, scale, hm_w: int, hm_h: int) -> tuple:
    """Section 4.4 for one keypoint, float32: (x * S/64 + c) - S * 0.5."""
    c0, c1 = np.float32(center[0]), np.float32(center[1])
    s0 = np.float32(np.float32(scale[0]) * np.float32(200.0))
    s1 = np.float32(np.float32(scale[1]) * np.float32(200.0))
    step_x = np.float32(float(s0) / hm_w)
    step_y = np.float32(float(s1) / hm_h)
    half_x = np.float32(s0 * np.float32(0.5))
    half_y = np.float32(s1 * np.float32(0.5))
    xi = np.float32(np.float32(np.float32(np.float32(x) * step_x) + c0) - half_x)
    yi = np.float32(np.float32(np.float32(np.float32(y) * step_y) + c1) - half_y)
    return xi, yi


def decode_heatmaps_loop(heatmaps, center, scale, kernel: int = 11):
    """Same contract as service.pipeline.dark.decode_heatmaps, one keypoint at a time.

    heatmaps (N, K, H, W); center, scale (N, 2). Returns landmarks (N, K, 2) float32 and
    scores (N, K) float32.
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    center = np.asarray(center, dtype=np.float32)
    scale = np.asarray(scale, dtype=np.float32)
    n_faces, n_kpts, hm_h, hm_w = heatmaps.shape
    landmarks = np.zeros((n_faces, n_kpts, 2), dtype=np.float32)
    scores = np.zeros((n_faces, n_kpts), dtype=np.float32)
    for n in range(n_faces):
        for k in range(n_kpts):
            hm = heatmaps[n, k]
            x, y, maxval = _peak(hm)
            L = _modulated_log_map(hm, kernel)
            x, y = _taylor_one(L, x, y)
            landmarks[n, k] = _to_image(x, y, center[n], scale[n], hm_w, hm_h)
            scores[n, k] = maxval
    return landmarks, scores
