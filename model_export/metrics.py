"""Face-alignment metrics, numpy only: NME (mmpose's definition), failure rate, CED and AUC.

NME (PIPELINE.md section 6, mmpose `keypoint_nme`): each face is normalised by the distance
between its ground-truth outer eye corners, ||gt[60] - gt[72]|| (inter-ocular); the error of
a keypoint is ||(pred - gt) / norm||; only visible keypoints count; a face whose normaliser is
0 is dropped entirely; the dataset NME is the sum of all valid errors over their number (a mean
over (face, keypoint) pairs, not over faces). Errors are kept in float32 as mmpose stores them;
sums are taken in float64.

Per-face NME is the mean of a face's valid errors. As in the WFLW literature, the failure rate
at 0.10 is the fraction of faces whose per-face NME exceeds 0.10, and AUC@0.10 is the area under
the cumulative error distribution (CED: fraction of faces with per-face NME <= x) from x = 0 to
0.10, divided by 0.10 so that it lies in [0, 1]. The area is computed exactly (the CED is a step
function: the area equals the mean over faces of max(0, 0.10 - e)), not by a trapezoid on a grid.
"""

from __future__ import annotations

import numpy as np

from service.pipeline.keypoints import NME_NORM_INDICES

DEFAULT_THRESHOLD = 0.10


def keypoint_errors(pred, gt, visible=None, norm_indices=NME_NORM_INDICES
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Normalised per-keypoint errors.

    pred, gt: (N, K, 2) pixels; visible: (N, K) (> 0 counts), default all. Returns errors
    (N, K) float32 (-1 where not valid, as mmpose fills them) and valid (N, K) bool.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[2] != 2:
        raise ValueError(f"pred and gt must both be (N, K, 2), got {pred.shape} and {gt.shape}")
    n, k, _ = gt.shape
    valid = np.ones((n, k), dtype=bool) if visible is None else np.asarray(visible).reshape(n, k) > 0
    a, b = norm_indices
    norm = np.linalg.norm(gt[:, a] - gt[:, b], axis=1)  # (N,)
    valid = valid & (norm > 0)[:, None]
    errors = np.full((n, k), -1, dtype=np.float32)
    safe = np.where(norm > 0, norm, 1.0)[:, None, None]
    dist = np.linalg.norm((pred - gt) / safe, axis=-1)
    errors[valid] = dist[valid]
    return errors, valid


def nme(pred, gt, visible=None, norm_indices=NME_NORM_INDICES) -> float:
    """Dataset NME: sum of valid normalised errors / their number (0 if there are none)."""
    errors, valid = keypoint_errors(pred, gt, visible, norm_indices)
    return nme_from_errors(errors, valid)


def nme_from_errors(errors: np.ndarray, valid: np.ndarray) -> float:
    count = int(valid.sum())
    return float(errors[valid].sum(dtype=np.float64) / max(1, count))


def per_face_nme(errors: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(N,) float64 mean valid error per face; NaN for a face with no valid keypoint."""
    counts = valid.sum(axis=1)
    sums = np.where(valid, errors, 0).sum(axis=1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _finite(face_nme) -> np.ndarray:
    face_nme = np.asarray(face_nme, dtype=np.float64).reshape(-1)
    return face_nme[~np.isnan(face_nme)]


def failure_rate(face_nme, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Fraction of faces with per-face NME > threshold (faces without a valid point excluded)."""
    e = _finite(face_nme)
    return float(np.mean(e > threshold)) if len(e) else 0.0


def ced(face_nme, max_threshold: float = DEFAULT_THRESHOLD, steps: int = 1001
        ) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative error distribution sampled at `steps` thresholds in [0, max_threshold]:
    (thresholds, fraction of faces with per-face NME <= threshold)."""
    e = np.sort(_finite(face_nme))
    thresholds = np.linspace(0.0, max_threshold, steps)
    if len(e) == 0:
        return thresholds, np.zeros_like(thresholds)
    return thresholds, np.searchsorted(e, thresholds, side="right") / len(e)


def auc(face_nme, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Area under the CED from 0 to threshold, divided by threshold (exact; in [0, 1])."""
    e = _finite(face_nme)
    if len(e) == 0:
        return 0.0
    return float(np.mean(np.clip(threshold - e, 0.0, None)) / threshold)


def summarize(errors: np.ndarray, valid: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """{"faces", "nme", "failure_rate", "auc"} for one evaluation set."""
    face = per_face_nme(errors, valid)
    return {
        "faces": int(np.sum(~np.isnan(face))),
        "nme": nme_from_errors(errors, valid),
        "failure_rate": failure_rate(face, threshold),
        "auc": auc(face, threshold),
    }
