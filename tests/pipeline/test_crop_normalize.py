"""Face crops and input normalisation (PIPELINE.md sections 2.3-2.5 and 6)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from service.pipeline.config import PipelineConfig
from service.pipeline.geometry import affine_transform_points, get_affine_transform
from service.pipeline.preprocess import crop_faces, decode_image, normalize

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "wflw_samples"
f32 = np.float32


def blob_image(x0: float, y0: float, shape=(300, 400)) -> np.ndarray:
    """Grey image with a smooth bright blob (sigma 3 px) centred at (x0, y0)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    blob = 250 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 3.0**2))
    return np.repeat(np.round(blob).astype(np.uint8)[..., None], 3, axis=2)


def test_crop_puts_a_dot_where_the_affine_says():
    x0, y0 = 123.3, 87.6
    center, scale = np.float32([[130.0, 90.5]]), np.float32([[0.6, 0.6]])  # 120 px -> 256 px
    crops = crop_faces(blob_image(x0, y0), center, scale, (256, 256))
    assert crops.shape == (1, 256, 256, 3) and crops.dtype == np.uint8
    matrix = get_affine_transform(center[0], scale[0], 0, (256, 256))
    expected = affine_transform_points([x0, y0], matrix)
    weights = crops[0, :, :, 0].astype(np.float64)
    weights[weights < 20] = 0  # ignore the faint tails, keep the blob symmetric
    yy, xx = np.mgrid[0:256, 0:256]
    centroid = [(weights * xx).sum() / weights.sum(), (weights * yy).sum() / weights.sum()]
    np.testing.assert_allclose(centroid, expected, atol=0.1)


def test_crop_outside_the_image_is_zero():
    image = np.full((50, 50, 3), 200, np.uint8)
    crops = crop_faces(image, np.float32([[0, 0], [25, 25]]), np.float32([[0.5, 0.5]] * 2),
                       (64, 48))
    assert crops.shape == (2, 48, 64, 3)
    assert crops[0, :10, :10].max() == 0  # top-left of the first crop lies outside
    assert crops[0, -5:, -5:].min() == 200
    assert crops[1, 24, 32].tolist() == [200, 200, 200]


@pytest.mark.parametrize("image_id", [2, 12])
def test_real_wflw_crop_contains_the_annotated_landmarks(image_id):
    meta = json.loads((SAMPLES / "test_wflw.json").read_text())
    image = next(i for i in meta["images"] if i["id"] == image_id)
    faces = [a for a in meta["annotations"] if a["image_id"] == image_id]
    rgb = decode_image((SAMPLES / image["file_name"]).read_bytes(), max_pixels=4096 * 4096)
    assert rgb.shape == (image["height"], image["width"], 3)

    center = np.array([a["center"] for a in faces], np.float32)
    # Section 6: the dataset path multiplies the annotated scalar scale by 1.25.
    scale = np.array([[a["scale"]] * 2 for a in faces], np.float32) * f32(1.25)
    crops = crop_faces(rgb, center, scale, (256, 256))
    assert crops.shape == (len(faces), 256, 256, 3)
    for i, face in enumerate(faces):
        landmarks = np.array(face["keypoints"], np.float64).reshape(98, 3)[:, :2]
        matrix = get_affine_transform(center[i], scale[i], 0, (256, 256))
        in_crop = affine_transform_points(landmarks, matrix)
        assert np.all((in_crop >= 0) & (in_crop < 256))
        # The landmark extent fills about 1/1.25 of the crop (scale ~ extent / 200).
        extent = (in_crop.max(axis=0) - in_crop.min(axis=0)).max()
        assert 256 / 1.25 * 0.85 < extent <= 256 / 1.25
        assert crops[i].std() > 10  # real picture content, not the zero border


def test_normalize_hand_computed_pixel_and_layout():
    config = PipelineConfig()
    crops = np.zeros((2, 3, 4, 3), np.uint8)
    crops[1, 1, 2] = (10, 200, 255)  # R, G, B
    out = normalize(crops, config.mean, config.std)
    assert out.shape == (2, 3, 3, 4) and out.dtype == np.float32 and out.flags.c_contiguous
    # (v/255 - mean)/std per channel, float32 divide, subtract, divide.
    expected = [(f32(10) / f32(255) - f32(0.485)) / f32(0.229),
                (f32(200) / f32(255) - f32(0.456)) / f32(0.224),
                (f32(255) / f32(255) - f32(0.406)) / f32(0.225)]
    np.testing.assert_array_equal(out[1, :, 1, 2], expected)
    np.testing.assert_allclose(out[1, :, 1, 2], [-1.946656, 1.465686, 2.64], atol=1e-5)
    np.testing.assert_array_equal(out[0, 0], np.full((3, 4), (f32(0) - f32(0.485)) / f32(0.229)))


def test_normalize_equals_direct_float32_arithmetic():
    config = PipelineConfig()
    crops = np.random.default_rng(0).integers(0, 256, (3, 32, 24, 3)).astype(np.uint8)
    direct = crops.astype(np.float32) / np.float32(255)
    direct = (direct - np.float32(config.mean)) / np.float32(config.std)
    np.testing.assert_array_equal(normalize(crops, config.mean, config.std),
                                  direct.transpose(0, 3, 1, 2))


def test_crop_then_normalize_on_the_warp_is_opencv_bilinear():
    # Guard that crop_faces is a plain cv2.warpAffine call (same pixels as calling it directly).
    rgb = np.random.default_rng(3).integers(0, 256, (120, 90, 3)).astype(np.uint8)
    center, scale = np.float32([[44.5, 60.25]]), np.float32([[0.33, 0.33]])
    matrix = get_affine_transform(center[0], scale[0], 0, (256, 256))
    direct = cv2.warpAffine(rgb, matrix, (256, 256), flags=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(crop_faces(rgb, center, scale, (256, 256))[0], direct)
