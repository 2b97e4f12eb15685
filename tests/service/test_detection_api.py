"""Faces without boxes over HTTP: the built-in detector on the real WFLW sample photos
(issue 11: the group photo's annotated faces are all found, ordered by score, cut at
MAX_FACES with a warning, an empty photo gives no face and a warning)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.service.conftest import SAMPLES, png_bytes


def _annotated(prefix: str):
    ann = json.loads((SAMPLES / "test_wflw.json").read_text())
    image = next(i for i in ann["images"] if i["file_name"].startswith(prefix))
    faces = [a for a in ann["annotations"] if a["image_id"] == image["id"]]
    return (SAMPLES / image["file_name"]).read_bytes(), faces


def _post(client, data: bytes, **fields):
    return client.post("/landmarks", files={"image": ("photo.jpg", data, "image/jpeg")}, data=fields)


def _covers(box, face) -> bool:
    """The returned box contains the annotated face's landmark centroid."""
    points = np.asarray(face["keypoints"], np.float64).reshape(-1, 3)[:, :2]
    cx, cy = points.mean(axis=0)
    x, y, w, h = box
    return x <= cx <= x + w and y <= cy <= y + h


@pytest.fixture()
def detecting_client(app_client, detector_model_path):
    def start(**overrides):
        return app_client(detector="retinaface", detector_path=detector_model_path, **overrides)
    return start


def test_group_photo_faces_are_found_ordered_and_cover_every_annotation(detecting_client):
    client = detecting_client()
    data, annotated = _annotated("7_")
    response = _post(client, data)
    assert response.status_code == 200, response.text
    body = response.json()
    faces = body["faces"]
    assert len(faces) >= 19  # the photo shows 19 faces
    scores = [f["detection"]["score"] for f in faces]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    for face in faces:
        assert len(face["detection"]["keypoints"]) == 5 and len(face["landmarks"]) == 98
        x, y, w, h = face["bbox"]
        assert w > 0 and h > 0
    for face in annotated:
        assert any(_covers(f["bbox"], face) for f in faces), f"annotated face {face['id']} not covered"
    assert body["timings_ms"]["detect"] > 0


def test_more_faces_than_the_limit_keeps_the_best_and_warns(detecting_client):
    client = detecting_client(max_faces=5)
    data, _ = _annotated("7_")
    all_faces = _post(detecting_client(), data).json()["faces"]
    body = _post(client, data).json()
    assert [f["detection"]["score"] for f in body["faces"]] == [f["detection"]["score"] for f in all_faces[:5]]
    assert any("LANDMARKS_MAX_FACES" in w for w in body["warnings"])


def test_no_face_gives_an_empty_list_and_a_warning(detecting_client):
    client = detecting_client()
    flat = np.full((480, 640, 3), 127, np.uint8)
    response = _post(client, png_bytes(flat))
    assert response.status_code == 200
    body = response.json()
    assert body["faces"] == [] and any("no face found" in w for w in body["warnings"])


def test_client_boxes_skip_detection_and_detect_false_is_the_whole_image(detecting_client, sample):
    client = detecting_client()
    with_boxes = _post(client, sample["bytes"], bboxes=json.dumps([sample["bbox"]])).json()
    assert "detect" not in with_boxes["timings_ms"] and with_boxes["faces"][0]["detection"] is None
    whole = _post(client, sample["bytes"], detect="false").json()
    assert whole["faces"][0]["bbox"] == [0.0, 0.0, sample["width"], sample["height"]]
    detected = _post(client, sample["bytes"]).json()
    # The one annotated face of this photo is the best detection, its box around the face.
    ann = {"keypoints": np.c_[sample["keypoints"], np.ones(98)].ravel().tolist()}
    assert _covers(detected["faces"][0]["bbox"], ann)


def test_detection_is_a_stage_in_the_latency_histogram(detecting_client, sample):
    client = detecting_client()
    _post(client, sample["bytes"])
    metrics = client.get("/metrics").text
    line = next(line for line in metrics.splitlines()
                if line.startswith('landmarks_stage_duration_seconds_count{stage="detect"}'))
    assert float(line.split()[-1]) >= 1
