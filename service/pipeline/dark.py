"""DARK heatmap decoding, vectorised over faces and keypoints (docs/PIPELINE.md sections 4, 8).

argmax -> Gaussian modulation -> log -> second-order Taylor step -> image pixels, reproducing
mmpose 0.x under numpy 1.x bit for bit (section 0): every dtype conversion below is explicit,
so numpy 2's different scalar promotion cannot change a result.

The blur kernel and the box unit come from the model's `HeatmapCodec` (`config.py`): the kernel
must match the sigma the model was trained with (11 for sigma 2, 17 for sigma 3).
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

from .geometry import PIXEL_STD, heatmap_to_image

_LOG_FLOOR = np.float32(1e-10)
# Maps blurred per cv2 call in decode_heatmaps. Bounded so the per-thread scratch buffers stay
# small (~2 MB each); reusing them matters: fresh multi-MB arrays come from mmap and page-fault
# on every call, which cost 3x the blur itself.
_CHUNK_MAPS = 98
_scratch = threading.local()
# The 13 log-map samples the Taylor step reads around a peak, as (dy, dx).
_STENCIL = ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0), (0, 2), (0, -2), (2, 0), (-2, 0),
            (1, 1), (-1, 1), (1, -1), (-1, -1))
_STENCIL_INDEX = {offset: i for i, offset in enumerate(_STENCIL)}


def argmax_heatmaps(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Peak of every map (section 4.1).

    heatmaps: (N, K, H, W). Returns coords (N, K, 2) float32 as (x, y) of the first maximum in
    row-major order, -1 where the maximum is not > 0 (zero, negative or NaN), and maxvals
    (N, K) float32, the unblurred maximum (the keypoint score).
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    n, k, height, width = heatmaps.shape
    flat = heatmaps.reshape(n, k, height * width)
    index = np.argmax(flat, axis=2)  # first maximum; a NaN counts as the maximum
    maxvals = np.max(flat, axis=2)
    coords = np.empty((n, k, 2), dtype=np.float32)
    coords[..., 0] = index % width
    coords[..., 1] = index // width
    coords[~(maxvals > 0)] = -1
    return coords, maxvals


def _blur_padded(maps: np.ndarray, padded: np.ndarray, out: np.ndarray, border: int,
                 kernel: int) -> np.ndarray:
    """cv2.GaussianBlur((k, k), 0) of each zero-padded map (M, H, W), through caller-owned
    buffers (`padded` must have zero borders); returns a view of `out` (M, H, W).

    The padded maps are stacked vertically into one tall image and blurred in one call. Each
    map keeps its own `border` rows of zeros above and below, so no kernel reaches a neighbour,
    and the image width equals a single padded map's width, so OpenCV runs the very same
    row/column arithmetic per pixel as on one map at a time: bit-identical to per-map blurring
    (tests/pipeline/test_dark.py compares against a per-map loop).
    """
    m, h, w = maps.shape
    padded[:, border:border + h, border:border + w] = maps
    tall = padded.reshape(m * (h + 2 * border), w + 2 * border)
    cv2.GaussianBlur(tall, (kernel, kernel), 0, dst=out.reshape(tall.shape))
    return out[:, border:border + h, border:border + w]


def _scratch_buffers(m: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-thread (padded, out) buffers for m maps of `shape`; borders of `padded` stay zero."""
    key = (m, shape)
    if getattr(_scratch, "key", None) != key:
        _scratch.key = key
        _scratch.padded = np.zeros((m, *shape), dtype=np.float32)
        _scratch.out = np.empty((m, *shape), dtype=np.float32)
    return _scratch.padded, _scratch.out


def _log_modulated(blurred: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """log(max(blurred * factor, 1e-10)) elementwise in float32 (section 4.2)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.log(np.maximum(blurred * factor, _LOG_FLOOR))


def _taylor_step(coords: np.ndarray, map_hw: tuple[int, int], sample) -> np.ndarray:
    """Section 4.3 with the log-map read through sample(n, k, y, x, dy, dx) -> float32 (M,),
    the value at row y + dy, column x + dx of map (n, k)."""
    refined = np.array(coords, dtype=np.float32, copy=True)
    h, w = map_hw
    px = refined[..., 0].astype(np.int64)  # int() truncation; -1 stays -1
    py = refined[..., 1].astype(np.int64)
    inside = (px >= 2) & (px <= w - 3) & (py >= 2) & (py <= h - 3)
    n_idx, k_idx = np.nonzero(inside)
    if n_idx.size == 0:
        return refined
    x, y = px[inside], py[inside]

    def at(dy: int, dx: int) -> np.ndarray:
        return sample(n_idx, k_idx, y, x, dy, dx)  # float32 samples

    f64 = np.float64
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # numpy 1: a float32 *scalar* times a Python float is float64 (section 0); the
        # differences inside the parentheses are float32 scalar - float32 scalar.
        grad_x = 0.5 * (at(0, 1) - at(0, -1)).astype(f64)
        grad_y = 0.5 * (at(1, 0) - at(-1, 0)).astype(f64)
        centre = at(0, 0).astype(f64)
        # `2 * a` with a Python int is float64 too, so these sums run in float64.
        dxx = 0.25 * ((at(0, 2).astype(f64) - 2 * centre) + at(0, -2).astype(f64))
        dyy = 0.25 * ((at(2, 0).astype(f64) - 2 * centre) + at(-2, 0).astype(f64))
        dxy = 0.25 * (((at(1, 1) - at(-1, 1)) - at(1, -1)) + at(-1, -1)).astype(f64)
        steppable = (dxx * dyy - dxy**2) != 0  # NaN counts as != 0, as in mmpose

        hessian = np.empty((int(steppable.sum()), 2, 2), dtype=f64)
        hessian[:, 0, 0] = dxx[steppable]
        hessian[:, 0, 1] = hessian[:, 1, 0] = dxy[steppable]
        hessian[:, 1, 1] = dyy[steppable]
        gradient = np.stack([grad_x[steppable], grad_y[steppable]], axis=1)[..., None]
        inverse, inverted = _invert_2x2(hessian)
        # Same ops as mmpose's `-inv @ derivative` (batched matmul = per-matrix matmul; an
        # explicit a*b + c*d is NOT bit-identical because BLAS may fuse multiply-adds).
        offset = (-inverse @ gradient)[..., 0]

    rows = np.flatnonzero(steppable)[inverted]
    n_sel, k_sel = n_idx[rows], k_idx[rows]
    # `coord += offset` on a float32 array: added in float64, stored as float32.
    stepped = refined[n_sel, k_sel].astype(f64) + offset[inverted]
    refined[n_sel, k_sel] = stepped.astype(np.float32)
    return refined


def _invert_2x2(hessians: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.linalg.inv of a (M, 2, 2) stack; returns (inverses, mask of matrices inverted).

    The closed-form adjugate/determinant inverse differs from LAPACK's LU in the last bits, so
    LAPACK it is. A matrix LAPACK calls singular despite det != 0 (possible only through
    rounding) would have crashed mmpose; here that keypoint just gets no Taylor step.
    """
    try:
        return np.linalg.inv(hessians), np.ones(len(hessians), dtype=bool)
    except np.linalg.LinAlgError:
        inverses = np.zeros_like(hessians)
        ok = np.ones(len(hessians), dtype=bool)
        for i, matrix in enumerate(hessians):
            try:
                inverses[i] = np.linalg.inv(matrix)
            except np.linalg.LinAlgError:
                ok[i] = False
        return inverses, ok


def decode_heatmaps(heatmaps: np.ndarray, center, scale, kernel: int = 11,
                    pixel_std: float = PIXEL_STD) -> tuple[np.ndarray, np.ndarray]:
    """DARK decode of flip-averaged heatmaps (N, K, H, W) float32 into image landmarks.

    center, scale: (N, 2) crop boxes (cast to float32), scale in units of `pixel_std` pixels.
    kernel: the codec's odd blur kernel (`PipelineConfig.modulate_kernel`). Returns landmarks
    (N, K, 2) float32 in image pixels and scores (N, K) float32 (the unblurred heatmap maxima,
    possibly <= 0).
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    h, w = heatmaps.shape[2:]
    coords, scores = argmax_heatmaps(heatmaps)
    factor, stencil = _blur_factor_and_stencil(heatmaps, coords, kernel)

    def sample(n_idx, k_idx, y, x, dy, dx):
        # Only the 13 Taylor samples per keypoint are ever read, and the modulation is
        # elementwise, so it is evaluated there instead of on whole maps (same values).
        values = stencil[n_idx, k_idx, _STENCIL_INDEX[(dy, dx)]]
        return _log_modulated(values, factor[n_idx, k_idx])

    coords = _taylor_step(coords, (h, w), sample)
    landmarks = heatmap_to_image(coords, center, scale, (w, h), pixel_std)
    return landmarks, scores


def _blur_factor_and_stencil(heatmaps: np.ndarray, coords: np.ndarray, kernel: int
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Blur every map (in chunks, through reused buffers) and keep only what DARK reads:
    the rescale factor m0 / blurred max (N, K) and the blurred values on the Taylor stencil
    around each integer peak (N, K, 13); stencil entries of peaks too near the border (no
    Taylor step) are clamped reads and never used."""
    if kernel % 2 != 1:
        raise ValueError(f"modulation kernel must be odd, got {kernel}")
    n, k, h, w = heatmaps.shape
    maps = heatmaps.reshape(n * k, h, w)
    border = (kernel - 1) // 2
    factor = np.empty(n * k, dtype=np.float32)
    stencil = np.empty((n * k, len(_STENCIL)), dtype=np.float32)
    px = np.clip(coords[..., 0].reshape(-1).astype(np.int64), 2, w - 3)
    py = np.clip(coords[..., 1].reshape(-1).astype(np.int64), 2, h - 3)
    dy = np.array([o[0] for o in _STENCIL])
    dx = np.array([o[1] for o in _STENCIL])
    for start in range(0, n * k, _CHUNK_MAPS):
        chunk = maps[start:start + _CHUNK_MAPS]
        m = len(chunk)
        padded, out = _scratch_buffers(m, (h + 2 * border, w + 2 * border))
        blurred = _blur_padded(chunk, padded, out, border, kernel)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            # float32 / float32, taken literally: 0/0 -> NaN, a negative blurred max flips signs.
            factor[start:start + m] = chunk.max(axis=(1, 2)) / blurred.max(axis=(1, 2))
        rows = np.arange(m)[:, None]
        stencil[start:start + m] = blurred[rows, py[start:start + m, None] + dy,
                                           px[start:start + m, None] + dx]
    return factor.reshape(n, k), stencil.reshape(n, k, len(_STENCIL))
