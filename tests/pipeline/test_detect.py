"""Face detector pre/post-processing (service.pipeline.detect) against hand-built references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from service.pipeline.config import PipelineConfig
from service.pipeline.detect import (
    CALIBRATION_FILE,
    MEAN_BGR,
    DetectorCalibration,
    decode_boxes,
    decode_landmarks,
    detector_boxes_to_center_scale,
    detector_boxes_to_face_boxes,
    nms,
    postprocess,
    preprocess_for_detector,
    prior_boxes,
)
from service.pipeline.faces import centers_and_scales

# --------------------------------------------------------------------------- priors


def test_prior_grid_by_hand():
    # 16 x 24 input: stride 8 -> 2 x 3 cells, stride 16 -> 1 x 2 (ceil), stride 32 -> 1 x 1.
    expected = []
    for cy, cx in [(4, 4), (4, 12), (4, 20), (12, 4), (12, 12), (12, 20)]:
        expected += [(cx, cy, 16, 16), (cx, cy, 32, 32)]
    for cx in (8, 24):
        expected += [(cx, 8, 64, 64), (cx, 8, 128, 128)]
    expected += [(16, 16, 256, 256), (16, 16, 512, 512)]
    np.testing.assert_array_equal(prior_boxes(16, 24), np.array(expected, dtype=np.float64))


def test_prior_count_uses_ceil_per_stride():
    # 33 x 70: ceil -> (5*9 + 3*5 + 2*3) cells * 2 sizes
    assert len(prior_boxes(33, 70)) == 2 * (5 * 9 + 3 * 5 + 2 * 3)
    assert len(prior_boxes(640, 640)) == 2 * (80 * 80 + 40 * 40 + 20 * 20) == 16800
    with pytest.raises(ValueError):
        prior_boxes(0, 10)


# --------------------------------------------------------------------------- decoding


def _encode_box(box_xyxy, prior, variances=(0.1, 0.2)):
    """The inverse of RetinaFace's decoding, written out per box."""
    x1, y1, x2, y2 = box_xyxy
    pcx, pcy, pw, ph = prior
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    return [(cx - pcx) / (variances[0] * pw), (cy - pcy) / (variances[0] * ph),
            math.log(w / pw) / variances[1], math.log(h / ph) / variances[1]]


def test_decode_boxes_inverts_hand_encoding():
    priors = np.array([[4, 4, 16, 16], [100, 60, 64, 64], [320, 320, 512, 512]], dtype=float)
    boxes = np.array([[0, -3, 20, 12], [70, 20, 150, 110], [10, 30, 700, 650]], dtype=float)
    loc = np.array([_encode_box(b, p) for b, p in zip(boxes, priors)])
    np.testing.assert_allclose(decode_boxes(loc, priors), boxes, atol=1e-9)
    # zero regression = the prior itself
    np.testing.assert_allclose(decode_boxes(np.zeros((1, 4)), [[10, 20, 8, 8]]), [[6, 16, 14, 24]])


def test_decode_landmarks_by_hand():
    prior = np.array([[50.0, 40.0, 32.0, 32.0]])
    points = np.array([[40, 30], [60, 30], [50, 45], [42, 52], [58, 52]], dtype=float)
    encoded = ((points - prior[0, :2]) / (0.1 * prior[0, 2:])).reshape(1, 10)
    np.testing.assert_allclose(decode_landmarks(encoded, prior), points[None], atol=1e-12)


# --------------------------------------------------------------------------- NMS


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _nms_loop(boxes, scores, threshold):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if all(_iou(boxes[i], boxes[k]) <= threshold for k in keep):
            keep.append(i)
    return keep


def test_nms_hand_cases():
    a, b = [0, 0, 10, 10], [5, 0, 15, 10]  # IoU = 50 / 150 = 1/3
    assert nms([a, b], [0.9, 0.8], 0.3).tolist() == [0]
    assert nms([a, b], [0.9, 0.8], 0.4).tolist() == [0, 1]
    assert nms([a, b], [0.7, 0.8], 0.3).tolist() == [1]
    # chain: A suppresses B, so C (which only overlaps B) survives
    boxes = [[0, 0, 10, 10], [2, 0, 12, 10], [4, 0, 14, 10]]
    assert nms(boxes, [0.9, 0.8, 0.7], 0.5).tolist() == [0, 2]
    # disjoint boxes all survive, best first
    assert nms([[0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10]], [0.1, 0.3, 0.2], 0.0).tolist() == [1, 2, 0]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.4).tolist() == []
    with pytest.raises(ValueError):
        nms([[0, 0, 1, 1]], [0.1, 0.2], 0.5)


def test_nms_matches_loop_on_random_boxes():
    rng = np.random.default_rng(3)
    for trial in range(20):
        n = int(rng.integers(1, 60))
        xy = rng.uniform(0, 100, size=(n, 2))
        wh = rng.uniform(2, 40, size=(n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1)
        scores = rng.uniform(size=n)
        threshold = float(rng.choice([0.1, 0.3, 0.4, 0.7]))
        assert nms(boxes, scores, threshold).tolist() == _nms_loop(boxes.tolist(), scores.tolist(),
                                                                     threshold), trial


# --------------------------------------------------------------------------- preprocess


def test_preprocess_small_image_is_bgr_minus_mean_and_padded():
    rgb = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    batch, scale = preprocess_for_detector(rgb, 640)
    assert batch.shape == (1, 3, 32, 32) and batch.dtype == np.float32
    np.testing.assert_array_equal(scale, [1.0, 1.0])
    for y, x in itertools.product(range(3), range(5)):
        r, g, b = rgb[y, x].astype(np.float32)
        assert batch[0, :, y, x].tolist() == [b - MEAN_BGR[0], g - MEAN_BGR[1], r - MEAN_BGR[2]]
    assert not batch[0, :, 3:, :].any() and not batch[0, :, :, 5:].any()  # padding = mean colour


def test_preprocess_downscales_long_side_only():
    rgb = np.full((1000, 500, 3), 200, dtype=np.uint8)
    batch, scale = preprocess_for_detector(rgb, 640)
    assert batch.shape == (1, 3, 640, 320)
    np.testing.assert_allclose(scale, [320 / 500, 640 / 1000])
    np.testing.assert_allclose(batch[0, :, 0, 0], [200 - 104, 200 - 117, 200 - 123])
    # 4K: 3840 x 2160 -> 640 x 360, padded to 640 x 384
    batch, scale = preprocess_for_detector(np.zeros((2160, 3840, 3), np.uint8), 640)
    assert batch.shape == (1, 3, 384, 640)
    np.testing.assert_allclose(scale, [1 / 6, 1 / 6])


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32),
                                 np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4, 4), np.uint8)])
def test_preprocess_rejects_bad_images(bad):
    with pytest.raises(ValueError):
        preprocess_for_detector(bad, 640)


# --------------------------------------------------------------------------- postprocess


def test_postprocess_synthetic_output():
    """Outputs built from known boxes: thresholding, NMS, ordering, image-pixel scaling."""
    height, width = 64, 96
    priors = prior_boxes(height, width)
    count = len(priors)
    loc = np.zeros((1, count, 4), np.float32)
    conf = np.tile(np.float32([0.99, 0.01]), (1, count, 1))
    landmarks = np.zeros((1, count, 10), np.float32)
    # face A (detector pixels) on prior 5, a near-duplicate of A on prior 7, face B on the last
    wanted = {5: ([10, 8, 30, 34], 0.80), 7: ([11, 8, 31, 35], 0.70), count - 1: ([50, 10, 90, 60], 0.95)}
    for index, (box, score) in wanted.items():
        loc[0, index] = _encode_box(box, priors[index])
        conf[0, index] = [1 - score, score]
        pts = np.array([[box[0] + 5, box[1] + 9], [box[2] - 5, box[1] + 9], [(box[0] + box[2]) / 2,
                        box[1] + 14], [box[0] + 6, box[3] - 5], [box[2] - 6, box[3] - 5]])
        landmarks[0, index] = ((pts - priors[index, :2]) / (0.1 * priors[index, 2:])).ravel()
    conf[0, 11] = [0.6, 0.4]  # below the threshold
    scale = np.array([0.5, 0.25])  # detector px per image px
    det = postprocess([loc, conf, landmarks], (1, 3, height, width), scale, threshold=0.5,
                      nms_iou=0.4)
    assert len(det) == 2
    np.testing.assert_allclose(det.scores, [0.95, 0.80], rtol=1e-6)
    # xywh in image pixels: x / 0.5, y / 0.25
    np.testing.assert_allclose(det.boxes, [[100, 40, 80, 200], [20, 32, 40, 104]], atol=1e-4)
    np.testing.assert_allclose(det.keypoints[1, 2], [(10 + 30) / 2 / 0.5, (8 + 14) / 0.25], atol=1e-4)
    assert det.boxes.shape == (2, 4) and det.keypoints.shape == (2, 5, 2)
    # a higher NMS threshold keeps the duplicate; a higher score threshold drops face A
    assert len(postprocess([loc, conf, landmarks], (height, width), 1.0, 0.5, nms_iou=0.95)) == 3
    assert len(postprocess([loc, conf, landmarks], (height, width), 1.0, 0.9)) == 1
    assert len(postprocess([loc, conf * 0, landmarks], (height, width), 1.0, 0.5)) == 0
    with pytest.raises(ValueError, match="priors"):
        postprocess([loc, conf, landmarks], (32, 32), 1.0, 0.5)


# --------------------------------------------------------------------------- calibration


def test_packaged_calibration_loads_and_roundtrips(tmp_path):
    packaged = DetectorCalibration.load()
    assert packaged == DetectorCalibration.load(CALIBRATION_FILE)
    assert packaged.faces >= 4 and 0.5 < packaged.size_factor < 2
    copy = DetectorCalibration.load(packaged.save(tmp_path / "c.json"))
    assert copy == packaged
    (tmp_path / "bad.json").write_text('{"center_offset_x": 0, "center_offset_y": 0, "size_factor": -1}')
    with pytest.raises(ValueError, match="size factor"):
        DetectorCalibration.load(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        DetectorCalibration.load(tmp_path / "broken.json")
    with pytest.raises(ValueError, match="not found"):
        DetectorCalibration.load(tmp_path / "missing.json")


def test_calibrated_center_scale_by_hand():
    config = PipelineConfig()
    rule = DetectorCalibration(center_offset_x=0.1, center_offset_y=0.2, size_factor=1.5)
    box = np.array([[100.0, 200.0, 80.0, 120.0]])
    side = 1.5 * math.sqrt(80 * 120)
    np.testing.assert_allclose(detector_boxes_to_face_boxes(box, rule),
                               [[148 - side / 2, 284 - side / 2, side, side]])
    center, scale = detector_boxes_to_center_scale(box, rule, config)
    assert center.dtype == np.float32 and scale.dtype == np.float32
    np.testing.assert_allclose(center, [[148, 284]], rtol=1e-6)
    np.testing.assert_allclose(scale, [[side / 200 * 1.25] * 2], rtol=1e-6)


def test_identity_calibration_on_square_boxes_is_the_landmark_convention():
    config = PipelineConfig()
    boxes = np.array([[10.0, 20.0, 50.0, 50.0], [0.5, 7.25, 123.0, 123.0]])
    got = detector_boxes_to_center_scale(boxes, DetectorCalibration(), config)
    want = centers_and_scales(boxes, config)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6)
