"""Flip test helpers against a hand-written example (PIPELINE.md section 3)."""

from __future__ import annotations

import numpy as np

from service.pipeline.flip import flip_back, flip_inputs, merge_flip
from service.pipeline.keypoints import FLIP_PAIRS

PAIRS = ((0, 1), (2, 3))


def small_maps() -> np.ndarray:
    """(1, 4, 4, 4): channel c holds 100*c + 10*row + col."""
    c, r, x = np.meshgrid(np.arange(4), np.arange(4), np.arange(4), indexing="ij")
    return (100 * c + 10 * r + x).astype(np.float32)[None]


def test_flip_back_without_shift_by_hand():
    out = flip_back(small_maps(), PAIRS, shift=False)
    # Channel 0 takes channel 1 mirrored; channel 3 takes channel 2 mirrored.
    np.testing.assert_array_equal(out[0, 0], [[103, 102, 101, 100],
                                              [113, 112, 111, 110],
                                              [123, 122, 121, 120],
                                              [133, 132, 131, 130]])
    np.testing.assert_array_equal(out[0, 3], [[203, 202, 201, 200],
                                              [213, 212, 211, 210],
                                              [223, 222, 221, 220],
                                              [233, 232, 231, 230]])


def test_flip_back_with_shift_by_hand():
    out = flip_back(small_maps(), PAIRS, shift=True)
    # Mirrored then moved one column right; column 0 keeps its mirrored value.
    np.testing.assert_array_equal(out[0, 1], [[3, 3, 2, 1],
                                              [13, 13, 12, 11],
                                              [23, 23, 22, 21],
                                              [33, 33, 32, 31]])
    np.testing.assert_array_equal(out[0, 2], [[303, 303, 302, 301],
                                              [313, 313, 312, 311],
                                              [323, 323, 322, 321],
                                              [333, 333, 332, 331]])


def test_flip_back_equals_explicit_loops_on_wflw_pairs():
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((2, 98, 8, 6)).astype(np.float32)
    partner = {k: k for k in range(98)}
    for a, b in FLIP_PAIRS:
        partner[a], partner[b] = b, a
    expected = np.empty_like(maps)
    for n in range(2):
        for k in range(98):
            for y in range(8):
                for x in range(6):
                    source_col = 5 - max(x - 1, 0)  # shift right, then un-mirror
                    expected[n, k, y, x] = maps[n, partner[k], y, source_col]
    out = flip_back(maps, FLIP_PAIRS)
    np.testing.assert_array_equal(out, expected)
    assert out.flags.c_contiguous


def test_merge_flip_is_float32_average():
    plain = np.random.default_rng(1).random((1, 4, 4, 4), dtype=np.float32)
    flipped = small_maps() / np.float32(7)
    merged = merge_flip(plain, flipped, PAIRS)
    assert merged.dtype == np.float32
    back = flip_back(flipped, PAIRS)
    np.testing.assert_array_equal(merged, (plain + back) / np.float32(2))
    # One entry by hand: channel 1, row 0, column 0 comes from channel 0, row 0, column 3.
    assert merged[0, 1, 0, 0] == (plain[0, 1, 0, 0] + np.float32(3) / np.float32(7)) / 2


def test_flipping_twice_without_shift_is_identity():
    maps = np.random.default_rng(2).standard_normal((2, 98, 5, 7)).astype(np.float32)
    once = flip_back(maps, FLIP_PAIRS, shift=False)
    assert not np.array_equal(once, maps)
    np.testing.assert_array_equal(flip_back(once, FLIP_PAIRS, shift=False), maps)


def test_flip_inputs_mirrors_width():
    batch = np.arange(2 * 3 * 2 * 4, dtype=np.float32).reshape(2, 3, 2, 4)
    out = flip_inputs(batch)
    assert out.flags.c_contiguous and out.dtype == np.float32
    np.testing.assert_array_equal(out[0, 0], [[3, 2, 1, 0], [7, 6, 5, 4]])
    np.testing.assert_array_equal(flip_inputs(out), batch)
