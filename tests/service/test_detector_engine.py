"""The real RetinaFace model through service.engine.detector on the WFLW sample photos."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from model_export.data.wflw import load_rgb, read_json
from model_export.detector import fit_calibration
from service.engine.detector import DetectorLoadError, FaceDetector
from service.pipeline.config import PipelineConfig
from service.pipeline.detect import (
    DetectorCalibration,
    detector_boxes_to_center_scale,
    prior_boxes,
)
from service.pipeline.faces import centers_and_scales

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "wflw_samples"
GROUP = SAMPLES / "7_Cheering_Cheering_7_16.jpg"


@pytest.fixture(scope="module")
def detector(detector_model_path) -> FaceDetector:
    return FaceDetector(detector_model_path, ["CPUExecutionProvider"], threads=1)


@pytest.fixture(scope="module")
def records():
    return read_json(SAMPLES / "test_wflw.json", SAMPLES)


def _iou_xywh(a, b) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    h = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)


def _annotated_box(record) -> list[float]:
    side = record.scale * 200
    return [record.center[0] - side / 2, record.center[1] - side / 2, side, side]


def _best_match(record, boxes) -> int:
    """Index of the detector box with the highest IoU with the annotated face (loop)."""
    ious = [_iou_xywh(_annotated_box(record), box) for box in boxes]
    return int(np.argmax(ious)) if ious and max(ious) >= 0.3 else -1


def test_model_io_and_output_order(detector, detector_model_path):
    session = ort.InferenceSession(str(detector_model_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["loc", "conf", "landmarks"]
    # odd sizes: the network's feature maps follow the ceil rule of prior_boxes
    for height, width in [(37, 53), (64, 96), (100, 33)]:
        loc, conf, landmarks = session.run(None, {"input": np.zeros((1, 3, height, width), np.float32)})
        assert loc.shape == (1, len(prior_boxes(height, width)), 4)
        assert landmarks.shape[-1] == 10
        # conf is already a softmax: the two columns sum to one
        np.testing.assert_allclose(conf.sum(axis=-1), 1.0, atol=1e-5)
    assert detector.provider == detector.session.get_providers()[0] == "CPUExecutionProvider"
    assert len(detector.sha256) == 64


def test_group_photo_faces(detector, records):
    rgb = load_rgb(GROUP)
    det = detector.detect(rgb, 640, 0.5)
    assert 17 <= len(det) <= 21, len(det)  # 19 visible faces
    assert np.all(np.diff(det.scores) <= 0) and det.scores.min() >= 0.5 and det.scores.max() <= 1
    for record in (r for r in records if r.image_path == GROUP):
        assert _best_match(record, det.boxes) >= 0, record.source
    # the five keypoints lie in their box: eyes above the mouth, image-left before image-right
    x, y, w, h = det.boxes.T
    pts = det.keypoints
    assert np.all((pts[..., 0] > x[:, None]) & (pts[..., 0] < (x + w)[:, None]))
    assert np.all((pts[..., 1] > y[:, None]) & (pts[..., 1] < (y + h)[:, None]))
    assert np.all(pts[:, 0, 0] < pts[:, 1, 0]) and np.all(pts[:, 3, 0] < pts[:, 4, 0])
    assert np.all(pts[:, :2, 1].max(axis=1) < pts[:, 3:, 1].min(axis=1))


def test_every_annotated_face_is_found(detector, records):
    for path in {r.image_path for r in records}:
        det = detector.detect(load_rgb(path), 640, 0.5)
        for record in (r for r in records if r.image_path == path):
            assert _best_match(record, det.boxes) >= 0, record.source


def _inside_fraction(box, other) -> float:
    """Fraction of `box`'s area that lies inside `other` (xywh)."""
    w = max(0.0, min(box[0] + box[2], other[0] + other[2]) - max(box[0], other[0]))
    h = max(0.0, min(box[1] + box[3], other[1] + other[3]) - max(box[1], other[1]))
    return w * h / (box[2] * box[3])


def test_a_face_filling_the_frame_gives_one_box(detector, records):
    """A face cropped tightly and upscaled to 1000 px is one box, not pieces. In the group photo
    the crop may also catch a neighbour's face at its edge: that one may be found too, but no
    second box may lie inside the big face."""
    broken_without_downscale = 0
    for record in records:
        rgb = load_rgb(record.image_path)
        for padding in (1.1, 1.25):
            side = record.scale * 200 * padding
            x0, y0 = (max(0, int(c - side / 2)) for c in record.center)
            crop = rgb[y0:int(y0 + side), x0:int(x0 + side)]
            big = cv2.resize(np.ascontiguousarray(crop), (1000, 1000), interpolation=cv2.INTER_CUBIC)
            det = detector.detect(big, 640, 0.5)
            where = (record.source, padding, det.boxes.round())
            face = [i for i, box in enumerate(det.boxes) if box[2] > 500 and box[3] > 500]
            assert len(face) == 1, where
            others = [box for i, box in enumerate(det.boxes) if i != face[0]]
            assert all(_inside_fraction(box, det.boxes[face[0]]) < 0.5 for box in others), where
            if record.image_path != GROUP:  # the football photo: nothing else in the crop
                assert len(det) == 1, where
            pieces = detector.detect(big, 1024, 0.5)
            broken_without_downscale += sum(
                _inside_fraction(box, det.boxes[face[0]]) > 0.5 for box in pieces.boxes) > 1
    # why the downscale matters: at full size some of the same faces break into pieces
    assert broken_without_downscale > 0


def test_large_input_is_downscaled(detector):
    rgb = cv2.resize(load_rgb(GROUP), (2048, 2048), interpolation=cv2.INTER_LINEAR)
    small = detector.detect(load_rgb(GROUP), 640, 0.5)
    large = detector.detect(rgb, 640, 0.5)
    assert len(large) == len(small)
    np.testing.assert_allclose(large.boxes / 2, small.boxes, atol=4)


def test_no_faces_and_tiny_images(detector):
    assert len(detector.detect(np.full((480, 640, 3), 127, np.uint8), 640, 0.5)) == 0
    for shape in [(1, 1, 3), (5, 300, 3)]:
        det = detector.detect(np.zeros(shape, np.uint8), 640, 0.5)
        assert det.boxes.shape == (0, 4) and det.keypoints.shape == (0, 5, 2)


def test_detect_is_thread_safe(detector):
    images = [load_rgb(p) for p in sorted(SAMPLES.glob("*.jpg"))]
    serial = [detector.detect(img, 640, 0.5) for img in images]
    results: dict[int, object] = {}

    def work(i):
        results[i] = detector.detect(images[i % len(images)], 640, 0.5)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, det in results.items():
        np.testing.assert_allclose(det.boxes, serial[i % len(images)].boxes, atol=1e-3)


def test_providers_and_load_errors(detector_model_path, tmp_path):
    asked = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    det = FaceDetector(detector_model_path, asked)
    assert det.provider == det.session.get_providers()[0]  # the truth, whatever was asked
    missing = tmp_path / "models" / "retinaface_mnet025.onnx"
    with pytest.raises(DetectorLoadError) as info:
        FaceDetector(missing, ["CPUExecutionProvider"])
    message = str(info.value)
    assert "\n" not in message and str(missing) in message
    assert f"python -m model_export fetch-detector --output {missing}" in message
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(DetectorLoadError, match="cannot load"):
        FaceDetector(tmp_path / "junk.onnx", ["CPUExecutionProvider"])


def _matched_pairs(detector, records):
    boxes, centers, scales = [], [], []
    for record in records:
        det = detector.detect(load_rgb(record.image_path), 640, 0.5)
        index = _best_match(record, det.boxes)
        assert index >= 0
        boxes.append(det.boxes[index])
        centers.append(record.center)
        scales.append(record.scale)
    return np.array(boxes), np.array(centers, np.float64), np.array(scales)


def _errors(center, scale, centers, scales, config):
    """Centre error / face size and |log| scale ratio against the annotated (padded) crops."""
    want_scale = scales * config.bbox_padding
    centre_err = np.linalg.norm(center - centers, axis=1) / (scales * 200)
    scale_err = np.abs(np.log(scale[:, 0] / want_scale))
    return centre_err, scale_err


def test_calibration_beats_the_naive_box(detector, records):
    """The packaged rule, and a rule fitted without the face it is tested on (leave one out),
    reproduce the annotated centre/scale better than box_to_center_scale of the raw box."""
    config = PipelineConfig()
    boxes, centers, scales = _matched_pairs(detector, records)
    naive = _errors(*centers_and_scales(boxes, config), centers, scales, config)
    packaged = _errors(*detector_boxes_to_center_scale(boxes, DetectorCalibration.load(), config),
                       centers, scales, config)
    loo_centre, loo_scale = [], []
    for i in range(len(boxes)):
        rest = [j for j in range(len(boxes)) if j != i]
        rule = fit_calibration(boxes[rest], centers[rest], scales[rest])
        c, s = _errors(*detector_boxes_to_center_scale(boxes[[i]], rule, config), centers[[i]],
                       scales[[i]], config)
        loo_centre.append(c[0])
        loo_scale.append(s[0])
    print(f"centre error / face size: naive {naive[0].round(3)}, packaged {packaged[0].round(3)}, "
          f"leave-one-out {np.round(loo_centre, 3)}")
    print(f"|log scale ratio|: naive {naive[1].round(3)}, packaged {packaged[1].round(3)}, "
          f"leave-one-out {np.round(loo_scale, 3)}")
    for centre_err, scale_err in (packaged, (np.array(loo_centre), np.array(loo_scale))):
        assert centre_err.mean() < 0.6 * naive[0].mean()
        assert scale_err.mean() < 0.6 * naive[1].mean()
