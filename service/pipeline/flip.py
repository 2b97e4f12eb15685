"""Flip test: mirror the input, flip the second output back and average (PIPELINE.md section 3)."""

from __future__ import annotations

import numpy as np

from .keypoints import flip_index


def flip_inputs(batch: np.ndarray) -> np.ndarray:
    """Mirror a network input batch (N, 3, h, w) along its width; C-contiguous copy."""
    return np.ascontiguousarray(np.asarray(batch)[..., ::-1])


def flip_back(heatmaps: np.ndarray, flip_pairs, shift: bool = True) -> np.ndarray:
    """Heatmaps of a mirrored input (N, K, H, W) -> heatmaps in the original frame (N, K, H, W).

    Section 3 steps 1-3: channel a takes channel b's map for every flip pair (a, b), every map
    is mirrored along its width, and (with shift) moved one column right, column 0 keeping
    its own mirrored value.
    """
    heatmaps = np.asarray(heatmaps)
    index = flip_index(flip_pairs, heatmaps.shape[1])
    mirrored = heatmaps[:, index, :, ::-1]  # fancy indexing makes a copy
    if not shift:
        return np.ascontiguousarray(mirrored)
    out = np.empty_like(mirrored, order="C")
    out[..., 1:] = mirrored[..., :-1]
    out[..., 0] = mirrored[..., 0]
    return out


def merge_flip(heatmaps: np.ndarray, flipped_heatmaps: np.ndarray, flip_pairs,
               shift: bool = True) -> np.ndarray:
    """(P + flip_back(F)) / 2 in float32: the flip-test average (N, K, H, W) (section 3)."""
    plain = np.asarray(heatmaps, dtype=np.float32)
    back = flip_back(np.asarray(flipped_heatmaps, dtype=np.float32), flip_pairs, shift)
    back += plain
    back /= np.float32(2)
    return back
