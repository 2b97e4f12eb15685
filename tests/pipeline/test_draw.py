"""Overlay rendering: colours where the marks are, exact pixels everywhere else."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from service.pipeline.draw import (
    BOX_COLOR,
    DETECTOR_KEYPOINT_COLOR,
    GROUP_COLORS,
    MEDIA_TYPES,
    UNGROUPED_COLOR,
    draw_faces,
    encode_image,
    fit_within,
)
from service.pipeline.keypoints import WFLW_GROUPS, point_set_groups


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _grid_face(x0: float, y0: float, spacing: float = 11.0) -> tuple[np.ndarray, np.ndarray]:
    """A box and 98 points on a 14 x 7 grid inside it, at sub-pixel offsets."""
    columns, rows = np.meshgrid(np.arange(14), np.arange(7))
    points = np.stack([x0 + 10 + columns.ravel() * spacing + 0.3,
                       y0 + 10 + rows.ravel() * spacing - 0.2], axis=1)
    box = np.array([x0, y0, 14 * spacing + 10, 7 * spacing + 10])
    return box, points


def _expected_color(k: int) -> tuple[int, int, int]:
    for group, (start, stop) in WFLW_GROUPS.items():
        if start <= k < stop:
            return GROUP_COLORS[group]
    raise AssertionError(k)


def _pixel(image: np.ndarray, point) -> np.ndarray:
    x, y = (round(v) for v in point)
    return image[y, x]


def _far_from(shape, points, radius, box, box_margin) -> np.ndarray:
    """Mask of pixels farther than `radius` from every point and `box_margin` from the box outline."""
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    far = np.ones(shape[:2], bool)
    for x, y in points:
        far &= (xs - x) ** 2 + (ys - y) ** 2 > radius**2
    bx, by, bw, bh = box
    inside_outer = (xs > bx - box_margin) & (xs < bx + bw + box_margin) & \
                   (ys > by - box_margin) & (ys < by + bh + box_margin)
    inside_inner = (xs > bx + box_margin) & (xs < bx + bw - box_margin) & \
                   (ys > by + box_margin) & (ys < by + bh - box_margin)
    far &= ~(inside_outer & ~inside_inner)
    return far


def test_each_landmark_has_its_groups_colour_and_the_rest_is_untouched():
    image = _noise(240, 420)
    box_a, points_a = _grid_face(20.0, 20.0)
    box_b, points_b = _grid_face(200.0, 120.0)
    detected_b = np.array([[215.0, 230.0], [250.0, 230.0], [290.0, 230.0], [330.0, 230.0],
                           [370.0, 230.0]])
    groups = point_set_groups("wflw98")
    before = image.copy()
    out = draw_faces(image, np.stack([box_a, box_b]), np.stack([points_a, points_b]), groups,
                     [None, detected_b])
    np.testing.assert_array_equal(image, before)  # input untouched
    assert out is not image and out.shape == image.shape and out.dtype == np.uint8
    for points in (points_a, points_b):
        for k, point in enumerate(points):
            assert tuple(_pixel(out, point)) == _expected_color(k), k

    # Marks are at most a few pixels across for faces this size; leave a generous margin.
    far = _far_from(image.shape, np.concatenate([points_a, points_b]), 6.0, box_a, 3.0)
    far &= _far_from(image.shape, detected_b, 10.0, box_b, 3.0)
    assert far.mean() > 0.5
    np.testing.assert_array_equal(out[far], image[far])
    assert (out != image).any(axis=2).sum() > 98 * 2 * 5  # every disc painted a few pixels

    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(encode_image(out, "png"), np.uint8),
                                        cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decoded, out)  # PNG keeps every pixel, drawn or not


def test_detector_keypoints_are_marked_in_their_own_colour_beside_the_box():
    image = np.zeros((200, 200, 3), np.uint8)
    box = np.array([[40.0, 40.0, 120.0, 120.0]])
    detected = np.array([[70.0, 80.0], [130.0, 80.0], [100.0, 110.0], [75.0, 140.0], [125.0, 140.0]])
    out = draw_faces(image, box, np.zeros((1, 0, 2)), None, [detected])
    for x, y in detected.astype(int):
        patch = out[y - 1: y + 2, x - 1: x + 2].reshape(-1, 3).astype(int)
        # the brightest pixel of the cross centre is the detector colour (anti-aliasing may
        # dim the neighbours, never shift the hue)
        best = patch[np.argmax(patch.sum(1))]
        assert np.abs(best - np.array(DETECTOR_KEYPOINT_COLOR)).max() <= 10, best
    top_edge = out[40, 60:140].astype(int)
    assert (top_edge.max(1) > 128).all()
    assert (np.abs(top_edge - top_edge[:, :1]).max() == 0)  # grey levels of the white box
    assert BOX_COLOR == (255, 255, 255)


def test_points_without_a_group_and_non_finite_points():
    image = np.zeros((100, 100, 3), np.uint8)
    points = np.array([[[30.0, 30.0], [np.nan, 50.0], [70.0, 70.0]]])
    out = draw_faces(image, [[10.0, 10.0, 80.0, 80.0]], points, {"pupils": np.array([2])})
    assert tuple(out[30, 30]) == UNGROUPED_COLOR
    assert tuple(out[70, 70]) == GROUP_COLORS["pupils"]


def test_drawing_on_a_shrunk_copy_scales_every_mark():
    image = _noise(600, 900, seed=1)
    box, points = _grid_face(100.0, 100.0, spacing=40.0)
    small, factor = fit_within(image, 450)
    assert factor == pytest.approx(0.5)
    out = draw_faces(small, box[None], points[None], point_set_groups("wflw98"), factor=factor)
    for k, point in enumerate(points):
        assert tuple(_pixel(out, point * factor)) == _expected_color(k)


def test_no_faces_gives_an_equal_copy():
    image = _noise(50, 60)
    out = draw_faces(image, np.zeros((0, 4)), np.zeros((0, 98, 2)))
    assert out is not image
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32),
                                 np.zeros((10, 10, 4), np.uint8)])
def test_rejects_images_that_are_not_rgb_uint8(bad):
    with pytest.raises(ValueError):
        draw_faces(bad, np.zeros((0, 4)), np.zeros((0, 98, 2)))


def test_rejects_mismatched_face_counts():
    with pytest.raises(ValueError):
        draw_faces(_noise(20, 20), np.zeros((2, 4)), np.zeros((1, 98, 2)))
    with pytest.raises(ValueError):
        draw_faces(_noise(20, 20), np.zeros((1, 4)), np.zeros((1, 98, 2)), detector_keypoints=[])


def test_far_away_and_huge_coordinates_do_not_break_drawing():
    image = _noise(40, 40)
    out = draw_faces(image, [[-1e12, 5.0, 3e12, 1e9]], [[[1e15, -1e15], [20.0, 20.0]]])
    assert tuple(out[20, 20]) == UNGROUPED_COLOR


@pytest.mark.parametrize(("height", "width", "max_side", "size"), [
    (3000, 4000, 1000, (750, 1000)),
    (4000, 3000, 1000, (1000, 750)),
    (3, 1001, 1000, (3, 1000)),
    (1001, 1, 1000, (1000, 1)),
])
def test_fit_within_honours_max_side_and_keeps_the_aspect(height, width, max_side, size):
    image = np.zeros((height, width, 3), np.uint8)
    out, factor = fit_within(image, max_side)
    assert out.shape[:2] == size and max(out.shape[:2]) == max_side
    assert factor == pytest.approx(max_side / max(height, width))
    assert abs(out.shape[0] / out.shape[1] - height / width) <= 1 / min(size)


def test_fit_within_leaves_small_images_alone():
    image = _noise(300, 200)
    out, factor = fit_within(image, 300)
    assert out is image and factor == 1.0


def test_fit_within_averages_areas_when_shrinking():
    image = _noise(400, 200, seed=3)
    out, factor = fit_within(image, 200)
    assert factor == 0.5
    block_mean = image.astype(np.float64).reshape(200, 2, 100, 2, 3).mean(axis=(1, 3))
    assert np.abs(out.astype(np.float64) - block_mean).max() <= 1.0


def test_encode_image_formats():
    image = np.zeros((32, 48, 3), np.uint8)
    image[:, :24] = (200, 30, 60)
    png, jpeg = encode_image(image, "png"), encode_image(image, "jpeg", quality=95)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and jpeg.startswith(b"\xff\xd8\xff")
    assert MEDIA_TYPES == {"jpeg": "image/jpeg", "png": "image/png"}
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR),
                           cv2.COLOR_BGR2RGB)
    assert decoded.shape == image.shape
    assert np.abs(decoded.astype(int) - image).mean() < 3  # colour order kept (RGB in, RGB out)
    assert len(encode_image(_noise(64, 64), "jpeg", quality=20)) < len(encode_image(_noise(64, 64), "jpeg", quality=95))
    with pytest.raises(ValueError):
        encode_image(image, "gif")
    with pytest.raises(ValueError):
        encode_image(image, "jpeg", quality=0)
