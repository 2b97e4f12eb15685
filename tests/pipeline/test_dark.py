"""DARK decode: vectorised implementation vs the per-keypoint reference loop, and accuracy."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from service.pipeline.config import HeatmapCodec, PipelineConfig
from service.pipeline.dark import argmax_heatmaps, decode_heatmaps
from service.pipeline.geometry import heatmap_to_image
from tests.reference.dark_loop import _modulated_log_map, decode_heatmaps_loop
from tests.reference.dark_whole_map import blur_stack, modulate, taylor_refine

N, K, H, W = 3, 98, 64, 64
GRID_Y, GRID_X = np.mgrid[0:H, 0:W].astype(np.float32)


def gaussian(cx: float, cy: float, sigma: float = 2.0, peak: float = 1.0) -> np.ndarray:
    d2 = (GRID_X - np.float32(cx)) ** 2 + (GRID_Y - np.float32(cy)) ** 2
    return (np.float32(peak) * np.exp(-d2 / np.float32(2 * sigma**2))).astype(np.float32)


def boxes(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    center = rng.uniform(100, 900, (n, 2)).astype(np.float32)
    scale = np.repeat(rng.uniform(0.3, 2.0, (n, 1)), 2, axis=1).astype(np.float32)
    scale[0, 1] *= np.float32(1.3)  # one non-square scale
    return center, scale


# --------------------------------------------------------------------------- map families


def random_positive(rng):
    return rng.random((N, K, H, W), dtype=np.float32)


def synthetic_gaussians(rng):
    maps = np.empty((N, K, H, W), np.float32)
    for n in range(N):
        for k in range(K):
            cx, cy = rng.uniform(-3, 66, 2)
            maps[n, k] = gaussian(cx, cy, peak=rng.uniform(0.05, 1.2))
    return maps


def noisy_network_like(rng):
    """Gaussian peaks plus small negative-mean noise, like an untrained/real head output."""
    noise = rng.normal(-0.01, 0.02, (N, K, H, W)).astype(np.float32)
    return synthetic_gaussians(rng) + noise


def ties(rng):
    """Quantised noise (many equal values) with 2-3 equal interior peaks per map."""
    maps = (rng.integers(0, 4, (N, K, H, W)) / 8).astype(np.float32)
    for n in range(N):
        for k in range(K):
            for _ in range(2 + k % 2):
                maps[n, k, rng.integers(3, 61), rng.integers(3, 61)] = 0.9
    return maps


def all_zero(rng):
    return np.zeros((N, K, H, W), np.float32)


def negative(rng):
    return -rng.random((N, K, H, W), dtype=np.float32) - np.float32(1e-3)


def with_nans(rng):
    maps = random_positive(rng)
    n, k, y, x = (rng.integers(0, s, 200) for s in (N, K, H, W))
    maps[n, k, y, x] = np.nan
    maps[:, :5] = np.nan  # entirely NaN maps
    return maps


def border_peaks(rng):
    maps = np.empty((N, K, H, W), np.float32)
    edge = [0, 1, 2, 3, 60, 61, 62, 63]  # 2 and 61 are the last positions that get a step
    for n in range(N):
        for k in range(K):
            cx, cy = rng.choice(edge), rng.choice(edge + [31, 32])
            maps[n, k] = gaussian(cx + rng.uniform(-0.45, 0.45), cy + rng.uniform(-0.45, 0.45))
    return maps


def flat_ridges(rng):
    """Ridges that are (almost) flat along one direction: near-singular Hessians."""
    maps = np.empty((N, K, H, W), np.float32)
    for n in range(N):
        for k in range(K):
            kind = k % 4
            cy = rng.uniform(10, 54)
            ridge = np.exp(-((GRID_Y - np.float32(cy)) ** 2) / np.float32(8)).astype(np.float32)
            if kind == 0:  # horizontal ridge with a tiny bump in the middle
                bump = np.float32(1e-4) * gaussian(rng.uniform(25, 40), cy, sigma=20)
                maps[n, k] = ridge + bump
            elif kind == 1:  # diagonal ridge
                d = (GRID_X - GRID_Y - np.float32(rng.uniform(-5, 5))) ** 2
                maps[n, k] = np.exp(-d / np.float32(16)) * (1 + 1e-5 * gaussian(32, 32, 15))
            elif kind == 2:  # a single tiny spike: every modulated value <= 1e-10 -> det == 0
                maps[n, k] = 0.0
                maps[n, k, rng.integers(5, 59), rng.integers(5, 59)] = 1e-30
            else:  # plateau: a 5x5 block of equal maxima
                maps[n, k] = 0.1
                y, x = rng.integers(5, 55, 2)
                maps[n, k, y:y + 5, x:x + 5] = 0.7
    return maps


def negative_blurred_max(rng):
    """One small positive spike in a sea of -1: the blurred max is negative, so the
    modulated map flips sign (section 8)."""
    maps = np.full((N, K, H, W), -1.0, np.float32)
    for n in range(N):
        for k in range(K):
            maps[n, k, rng.integers(0, H), rng.integers(0, W)] = rng.uniform(1e-4, 0.5)
    return maps


FAMILIES = [random_positive, synthetic_gaussians, noisy_network_like, ties, all_zero, negative,
            with_nans, border_peaks, flat_ridges, negative_blurred_max]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
def test_decode_matches_reference_loop_bit_for_bit(family):
    rng = np.random.default_rng(FAMILIES.index(family))
    maps = family(rng)
    center, scale = boxes(N, rng)
    landmarks, scores = decode_heatmaps(maps, center, scale)
    ref_landmarks, ref_scores = decode_heatmaps_loop(maps, center, scale)
    assert landmarks.shape == (N, K, 2) and landmarks.dtype == np.float32
    assert scores.shape == (N, K) and scores.dtype == np.float32
    np.testing.assert_array_equal(landmarks, ref_landmarks)
    np.testing.assert_array_equal(scores, ref_scores)
    # The whole-map step-by-step form agrees with both (decode only evaluates the log-map at
    # the Taylor samples; modulate computes whole maps).
    log_maps = modulate(maps)
    expected_maps = np.stack([_modulated_log_map(m, 11) for m in maps.reshape(-1, H, W)])
    np.testing.assert_array_equal(log_maps, expected_maps.reshape(maps.shape))
    coords, _ = argmax_heatmaps(maps)
    np.testing.assert_array_equal(
        heatmap_to_image(taylor_refine(coords, log_maps), center, scale, (W, H)), landmarks)


def test_decode_of_no_faces():
    landmarks, scores = decode_heatmaps(np.zeros((0, K, H, W), np.float32),
                                        np.zeros((0, 2)), np.zeros((0, 2)))
    assert landmarks.shape == (0, K, 2) and scores.shape == (0, K)


def test_the_edge_case_families_exercise_what_they_claim():
    rng = np.random.default_rng(7)
    # Flat ridges: some keypoints are inside the step window but get no step (det == 0).
    maps = flat_ridges(rng)
    coords, _ = argmax_heatmaps(maps)
    refined = taylor_refine(coords, modulate(maps))
    spike = coords[:, 2::4]
    assert np.all((spike >= 2) & (spike <= 61))
    np.testing.assert_array_equal(refined[:, 2::4], spike)
    assert np.any(refined[:, 0::4] != coords[:, 0::4])
    # Negative blurred maximum: the modulated map is the blurred map times a negative factor.
    maps = negative_blurred_max(rng)
    blurred = blur_stack(maps.reshape(-1, H, W), 11)
    assert np.all(blurred.max(axis=(1, 2)) < 0)
    assert np.all(np.isfinite(modulate(maps)))
    # All-zero maps modulate to NaN, but decode to the -1 position without NaNs.
    assert np.all(np.isnan(modulate(all_zero(rng))))
    center, scale = boxes(N, rng)
    landmarks, scores = decode_heatmaps(all_zero(rng), center, scale)
    assert np.all(np.isfinite(landmarks)) and np.all(scores == 0)


def test_argmax_rules():
    maps = np.zeros((1, 4, H, W), np.float32)
    maps[0, 0, 10, 20] = maps[0, 0, 10, 21] = maps[0, 0, 30, 5] = 2.0  # tie: first row-major
    maps[0, 1] = -1.0
    maps[0, 1, 3, 3] = -0.5  # max is negative
    maps[0, 2, 7, 9] = np.nan
    maps[0, 3, 63, 0] = 0.25
    coords, maxvals = argmax_heatmaps(maps)
    assert coords.dtype == np.float32 and maxvals.dtype == np.float32
    np.testing.assert_array_equal(coords[0], [[20, 10], [-1, -1], [-1, -1], [0, 63]])
    np.testing.assert_array_equal(maxvals[0, [0, 1, 3]], [2.0, -0.5, 0.25])
    assert np.isnan(maxvals[0, 2])


def test_batched_blur_is_bit_identical_to_per_map_blur():
    rng = np.random.default_rng(3)
    for m, h, w, kernel in [(1, 64, 64, 11), (7, 64, 64, 11), (294, 64, 64, 11),
                            (5, 48, 40, 7), (9, 64, 48, 11)]:
        maps = (rng.standard_normal((m, h, w)) * 10.0 ** rng.integers(-3, 4, (m, 1, 1)))
        maps = maps.astype(np.float32)
        border = (kernel - 1) // 2
        expected = np.empty_like(maps)
        for i in range(m):
            padded = np.zeros((h + 2 * border, w + 2 * border), np.float32)
            padded[border:-border, border:-border] = maps[i]
            expected[i] = cv2.GaussianBlur(padded, (kernel, kernel), 0)[border:-border,
                                                                         border:-border]
        np.testing.assert_array_equal(blur_stack(maps, kernel), expected)


def test_taylor_skips_points_outside_the_window():
    maps = np.stack([gaussian(x + 0.3, 30.4) for x in range(64)])[None]
    coords, _ = argmax_heatmaps(maps)
    refined = taylor_refine(coords, modulate(maps))
    moved = np.any(refined != coords, axis=-1)[0]
    # 2 <= px <= 61 moves; 0, 1, 62, 63 keep the integer position.
    np.testing.assert_array_equal(np.flatnonzero(~moved), [0, 1, 62, 63])


def test_dark_recovers_subpixel_gaussian_centres():
    rng = np.random.default_rng(11)
    n = 4
    true_xy = rng.uniform(8, 56, (n, K, 2))
    true_xy[np.isclose(true_xy % 1, 0)] += 0.25  # keep the centres non-integer
    maps = np.empty((n, K, H, W), np.float32)
    for i in range(n):
        for k in range(K):
            maps[i, k] = gaussian(*true_xy[i, k], sigma=2.0)

    coords, _ = argmax_heatmaps(maps)
    refined = taylor_refine(coords, modulate(maps))
    assert np.abs(refined - true_xy).max() <= 0.05
    assert np.abs(refined - true_xy).max() < 0.5 * np.abs(coords - true_xy).max()

    center = np.tile(np.float32([[412.5, 300.25]]), (n, 1))
    scale = np.full((n, 2), 1.25, np.float32)  # S = 250 image px -> 250/64 px per heatmap px
    landmarks, _ = decode_heatmaps(maps, center, scale)
    expected = true_xy * 250 / 64 + center[:, None] - 125
    assert np.abs(landmarks - expected).max() <= 0.05 * 250 / 64
    np.testing.assert_array_equal(landmarks, heatmap_to_image(refined, center, scale, (W, H)))


def _noisy_gaussians(rng, sigma: float, count: int, noise: float):
    """count Gaussian maps of `sigma` at random sub-pixel centres (1, count, H, W) plus white
    noise, and the true centres (1, count, 2) in heatmap pixels."""
    true_xy = rng.uniform(12, 52, (1, count, 2))
    cx = true_xy[..., 0, None, None].astype(np.float32)
    cy = true_xy[..., 1, None, None].astype(np.float32)
    maps = np.exp(-((GRID_X - cx) ** 2 + (GRID_Y - cy) ** 2) / np.float32(2 * sigma**2))
    maps = maps + rng.normal(0, noise, maps.shape)
    return maps.astype(np.float32), true_xy


@pytest.mark.parametrize("sigma", [2.0, 3.0])
def test_the_codec_kernel_of_the_training_sigma_decodes_best(sigma):
    """DARK's blur should match the target Gaussian: on noisy heatmaps of sigma 3 the codec's
    kernel 17 finds the centres better than the old fixed 11, and for sigma 2 it is 11 that
    wins (so it is the match that helps, not merely a wider blur)."""
    codec = HeatmapCodec(sigma=sigma)
    assert codec.blur_kernel == {2.0: 11, 3.0: 17}[sigma]
    other = {11: 17, 17: 11}[codec.blur_kernel]
    maps, true_xy = _noisy_gaussians(np.random.default_rng(5), sigma, 300, noise=0.05)
    center = np.float32([[100.0, 100.0]])
    scale = np.float32([[W / 200, H / 200]])  # one heatmap pixel = one image pixel

    def mean_error(kernel: int) -> float:
        landmarks, _ = decode_heatmaps(maps, center, scale, kernel)
        return float(np.linalg.norm(landmarks - (true_xy + center[:, None] - W / 2), axis=-1).mean())

    matched, mismatched = mean_error(codec.blur_kernel), mean_error(other)
    assert matched < 0.95 * mismatched, (matched, mismatched)


def test_decode_with_a_sigma_3_config_uses_kernel_17_and_its_pixel_std():
    config = PipelineConfig(codec=HeatmapCodec(sigma=3.0, pixel_std=100.0))
    rng = np.random.default_rng(9)
    maps = noisy_network_like(rng)
    center, scale = boxes(N, rng)
    landmarks, scores = decode_heatmaps(maps, center, scale, config.modulate_kernel,
                                        config.pixel_std)
    # a box of `scale` units of 100 px is scale / 2 units of 200 px (exact in float32); the
    # reference loop works in mmpose's 200 px units
    ref_landmarks, ref_scores = decode_heatmaps_loop(maps, center, scale / 2, kernel=17)
    np.testing.assert_array_equal(landmarks, ref_landmarks)
    np.testing.assert_array_equal(scores, ref_scores)
    with_11, _ = decode_heatmaps_loop(maps, center, scale / 2, kernel=11)
    assert np.abs(with_11 - landmarks).max() > 1e-3  # the kernel does change the answer
