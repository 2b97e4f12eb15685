"""Box -> centre/scale, crop affine and heatmap -> image mapping (PIPELINE.md 2.2-2.3, 4.4)."""

from __future__ import annotations

import numpy as np
import pytest

from service.pipeline.geometry import (
    affine_transform_points,
    box_to_center_scale,
    get_affine_transform,
    heatmap_to_image,
    xyxy_to_xywh,
)

f32 = np.float32


def test_xyxy_to_xywh_has_no_plus_one():
    out = xyxy_to_xywh([[10, 20, 110, 70], [0.5, 1.5, 2.0, 4.0]])
    np.testing.assert_array_equal(out, [[10, 20, 100, 50], [0.5, 1.5, 1.5, 2.5]])


def test_box_to_center_scale_wide_box():
    center, scale = box_to_center_scale([[10, 20, 100, 50]])
    assert center.dtype == np.float32 and scale.dtype == np.float32
    np.testing.assert_array_equal(center, [[60, 45]])  # centre before the aspect fix
    np.testing.assert_array_equal(scale, [[f32(100) / f32(200) * f32(1.25)] * 2])  # h := w


def test_box_to_center_scale_tall_box_and_padding():
    center, scale = box_to_center_scale([[0, 0, 30, 60]], padding=1.0)
    np.testing.assert_array_equal(center, [[15, 30]])
    # w := h = 60; 60 / 200 in float32 (0.3 rounded to float32), padding 1.0 leaves it.
    np.testing.assert_array_equal(scale, np.float32([[0.3, 0.3]]))
    assert scale[0, 0] == f32(60) / f32(200)
    _, padded = box_to_center_scale([[0, 0, 30, 60]], padding=1.25)
    assert padded[0, 1] == f32(0.3) * f32(1.25)


def test_box_to_center_scale_non_square_aspect():
    # aspect 0.75: a 30x60 box is widened to 45x60, a 90x60 box is heightened to 90x120.
    center, scale = box_to_center_scale([[0, 0, 30, 60], [1, 2, 90, 60]], aspect_ratio=0.75)
    expected = np.array([[45, 60], [90, 120]], f32) / f32(200) * f32(1.25)
    np.testing.assert_array_equal(scale, expected)
    np.testing.assert_array_equal(center, [[15, 30], [46, 32]])


def test_box_to_center_scale_float32_rounding_matches_mmpose_order():
    # A box whose numbers are not exact in float32: the centre is computed in float64 and
    # rounded once; the scale is rounded to float32, divided by 200 and padded in float32.
    box = np.array([[100.1, 50.3, 80.7, 80.7]])
    center, scale = box_to_center_scale(box)
    assert center[0, 0] == f32(100.1 + 80.7 * 0.5) and center[0, 1] == f32(50.3 + 80.7 * 0.5)
    assert scale[0, 0] == (f32(80.7) / f32(200)) * f32(1.25)
    # Vectorised result = box-by-box result.
    rng = np.random.default_rng(0)
    many = rng.uniform(0, 500, (50, 4))
    c, s = box_to_center_scale(many)
    for i in range(50):
        ci, si = box_to_center_scale(many[i])
        np.testing.assert_array_equal(c[i], ci[0])
        np.testing.assert_array_equal(s[i], si[0])


@pytest.mark.parametrize("center,side", [((412.5, 300.25), 250.0), ((100.3, 77.7), 93.1)])
def test_affine_rot0_matches_closed_form(center, side):
    scale = np.array([side / 200, side / 150], f32)  # scale[1] must be ignored
    matrix = get_affine_transform(np.array(center, f32), scale, 0, (256, 256))
    assert matrix.shape == (2, 3) and matrix.dtype == np.float64
    sw = float(scale[0]) * 200
    points = np.array([[0, 0], [center[0], center[1]], [500, 20], [37.5, 401.25]])
    expected = np.stack([(points[:, 0] - center[0]) * 256 / sw + 128,
                         (points[:, 1] - center[1]) * 256 / sw + 128], axis=1)
    np.testing.assert_allclose(affine_transform_points(points, matrix), expected, atol=1e-4)


def test_affine_uses_output_width_for_the_vertical_scale():
    # Non-square output: the "up" destination vector is W/2 long, so the map stays a
    # similarity with scale W/sw (section 2.3).
    matrix = get_affine_transform(np.float32([50, 50]), np.float32([0.5, 0.5]), 0, (192, 256))
    np.testing.assert_allclose(matrix, [[1.92, 0, 96 - 96], [0, 1.92, 128 - 96]], atol=1e-5)


@pytest.mark.parametrize("rot", [0.0, 30.0, -45.0])
def test_affine_forward_inverse_round_trip(rot):
    center, scale = np.float32([321.7, 210.2]), np.float32([1.37, 1.37])
    forward = get_affine_transform(center, scale, rot, (256, 256))
    inverse = get_affine_transform(center, scale, rot, (256, 256), inv=True)
    points = np.random.default_rng(1).uniform(0, 600, (100, 2))
    back = affine_transform_points(affine_transform_points(points, forward), inverse)
    np.testing.assert_allclose(back, points, atol=1e-6)
    # The centre goes to the middle of the crop, whatever the rotation.
    np.testing.assert_allclose(affine_transform_points(center, forward), [128, 128], atol=1e-4)


def test_affine_rotation_direction():
    # A point above the centre (image y up = smaller y) ends up rotated by +rot in mmpose's
    # (a cos - b sin, a sin + b cos) convention applied to the source "up" vector.
    center, scale = np.float32([100, 100]), np.float32([1.0, 1.0])  # sw = 200 -> 256/200
    forward = get_affine_transform(center, scale, 90, (256, 256))
    # The source up vector (0, -100) rotated by 90 degrees is (100, 0): that point maps to
    # the top middle of the crop.
    np.testing.assert_allclose(affine_transform_points([200, 100], forward), [128, 0], atol=1e-3)


def test_heatmap_to_image_matches_closed_form_and_maps_minus_one():
    rng = np.random.default_rng(2)
    coords = rng.uniform(0, 63, (3, 98, 2)).astype(f32)
    coords[0, :3] = -1
    center = np.float32([[412.5, 300.25], [100, 50], [7.5, 1000.0]])
    scale = np.float32([[1.25, 1.25], [0.5, 0.75], [2.0, 2.0]])
    out = heatmap_to_image(coords, center, scale, (64, 64))
    assert out.dtype == np.float32 and out.shape == (3, 98, 2)
    size = scale.astype(np.float64) * 200
    expected = coords * size[:, None] / 64 + center[:, None] - size[:, None] / 2
    np.testing.assert_allclose(out, expected, atol=1e-4)
    # No positive peak: c - S/2 - S/64, not -1.
    np.testing.assert_array_equal(out[0, :3], np.broadcast_to(
        (center[0] - f32(125)) - f32(250) / f32(64), (3, 2)))


def test_heatmap_to_image_is_float32_in_mmpose_order():
    coords = np.float32([[[10.123456, 20.654321]]])
    center, scale = np.float32([[482.5, 164.5]]), np.float32([[0.425 * 1.25] * 2])
    out = heatmap_to_image(coords, center, scale, (64, 64))
    s = scale[0, 0] * f32(200)
    step = f32(float(s) / 64)
    assert out[0, 0, 0] == (coords[0, 0, 0] * step + center[0, 0]) - s * f32(0.5)
    assert out[0, 0, 1] == (coords[0, 0, 1] * step + center[0, 1]) - s * f32(0.5)
