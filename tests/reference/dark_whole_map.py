"""Whole-map DARK steps: modulation of entire heatmaps and the Taylor step read from them.

The product decode (`service.pipeline.dark.decode_heatmaps`) only evaluates the modulated
log-map at the 13 samples the Taylor step reads; these functions compute whole maps, the way
the specification (docs/PIPELINE.md section 4) describes the steps, so tests can compare the
product against the step-by-step form.
"""

from __future__ import annotations

import cv2
import numpy as np

from tests.reference.dark_loop import _taylor_one

_LOG_FLOOR = np.float32(1e-10)


def blur_stack(maps: np.ndarray, kernel: int) -> np.ndarray:
    """cv2.GaussianBlur((k, k), 0) of each zero-padded map: (M, H, W) -> (M, H, W) float32.

    All maps in one call: padded maps stacked into one tall image (each keeps its own zero
    border, so no kernel reaches a neighbour).
    """
    maps = np.asarray(maps, dtype=np.float32)
    m, h, w = maps.shape
    if m == 0:
        return np.empty_like(maps)
    border = (kernel - 1) // 2
    padded = np.zeros((m, h + 2 * border, w + 2 * border), dtype=np.float32)
    padded[:, border:border + h, border:border + w] = maps
    tall = cv2.GaussianBlur(padded.reshape(m * (h + 2 * border), w + 2 * border),
                            (kernel, kernel), 0)
    return tall.reshape(padded.shape)[:, border:border + h, border:border + w].copy()


def modulate(heatmaps: np.ndarray, kernel: int = 11) -> np.ndarray:
    """DARK distribution modulation (section 4.2): (N, K, H, W) -> log-maps (N, K, H, W) float32.

    Blur each map padded with (kernel-1)//2 zeros, rescale so its maximum equals the original
    maximum m0 (float32 m0 / blurred max, taken literally: an all-zero map becomes NaN and a
    negative blurred max flips the sign), then L = log(max(map, 1e-10)).
    """
    if kernel % 2 != 1:
        raise ValueError(f"modulation kernel must be odd, got {kernel}")
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    n, k, h, w = heatmaps.shape
    maps = heatmaps.reshape(n * k, h, w)
    blurred = blur_stack(maps, kernel)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        factor = np.max(maps, axis=(1, 2)) / np.max(blurred, axis=(1, 2))
        log_maps = np.log(np.maximum(blurred * factor[:, None, None], _LOG_FLOOR))
    return log_maps.reshape(n, k, h, w)


def taylor_refine(coords: np.ndarray, log_maps: np.ndarray) -> np.ndarray:
    """One Newton step on whole log-maps at each integer peak (section 4.3).

    coords: (N, K, 2) float32 from argmax_heatmaps; log_maps: (N, K, H, W) from `modulate`.
    Returns refined coords (N, K, 2) float32 (points near the border or with a singular
    Hessian keep their integer position).
    """
    coords = np.asarray(coords, dtype=np.float32)
    log_maps = np.asarray(log_maps, dtype=np.float32)
    refined = coords.copy()
    for n in range(coords.shape[0]):
        for k in range(coords.shape[1]):
            x, y = float(coords[n, k, 0]), float(coords[n, k, 1])
            refined[n, k] = _taylor_one(log_maps[n, k], x, y)
    return refined
