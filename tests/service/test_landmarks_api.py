"""POST /landmarks end to end on the tiny model: results, formats, batching, errors."""

from __future__ import annotations

import base64
import json
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest

from service.pipeline import faces as face_pipeline
from service.pipeline.config import PipelineConfig
from service.pipeline.preprocess import decode_image
from tests.service.conftest import png_bytes, post_image


def offline_landmarks(model_path, data: bytes, boxes_xywh, flip: bool):
    """The same pipeline run directly on a session, one face at a time (no batcher, no HTTP)."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    config = PipelineConfig.from_metadata(session.get_modelmeta().custom_metadata_map)
    rgb = decode_image(data, 10**9)
    run = lambda x: session.run(["heatmaps"], {"input": x})[0]  # noqa: E731
    out = []
    for box in boxes_xywh:
        center, scale = face_pipeline.centers_and_scales(np.asarray([box], np.float64), config)
        landmarks, scores = face_pipeline.predict(run, rgb, center, scale, config, flip)
        out.append((landmarks[0], scores[0]))
    return out


def test_single_face_matches_the_offline_pipeline(client, sample, tiny_onnx):
    response = post_image(client, sample["bytes"], [sample["bbox"]])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"] == {"width": sample["width"], "height": sample["height"]}
    assert body["flip_test"] is True  # the default, as mmpose's published numbers need
    (face,) = body["faces"]
    assert np.asarray(face["landmarks"]).shape == (98, 2) and len(face["scores"]) == 98
    (want, want_scores), = offline_landmarks(tiny_onnx, sample["bytes"], [sample["bbox"]], True)
    np.testing.assert_allclose(face["landmarks"], want, atol=1e-5)
    np.testing.assert_allclose(face["scores"], want_scores, atol=1e-6)
    assert face["score"] == pytest.approx(float(np.mean(want_scores)), abs=1e-6)
    assert set(body["timings_ms"]) == {"decode", "preprocess", "queue", "inference", "postprocess", "total"}
    assert body["model"]["provider"] == "CPUExecutionProvider" and body["model"]["trained"] is False


def test_untrained_model_is_flagged_in_every_response_and_model_info(client, sample):
    body = post_image(client, sample["bytes"], [sample["bbox"]]).json()
    assert any("UNTRAINED" in w for w in body["warnings"])
    model = client.get("/model").json()
    assert model["trained"] is False and any("UNTRAINED" in w for w in model["warnings"])


def test_json_base64_equals_multipart(client, sample):
    multipart = post_image(client, sample["bytes"], [sample["bbox"]]).json()
    response = client.post("/landmarks", json={
        "image": base64.b64encode(sample["bytes"]).decode(), "bboxes": [sample["bbox"]]})
    assert response.status_code == 200, response.text
    assert response.json()["faces"] == multipart["faces"]


def test_no_boxes_means_the_whole_image(client, sample):
    whole = post_image(client, sample["bytes"]).json()
    explicit = post_image(client, sample["bytes"], [[0, 0, sample["width"], sample["height"]]]).json()
    assert whole["faces"] == explicit["faces"]
    assert whole["faces"][0]["bbox"] == [0.0, 0.0, sample["width"], sample["height"]]


def test_xyxy_boxes_equal_xywh(client, sample):
    x, y, w, h = sample["bbox"]
    a = post_image(client, sample["bytes"], [[x, y, w, h]]).json()["faces"][0]
    b = post_image(client, sample["bytes"], [[x, y, x + w, y + h]], bbox_format="xyxy").json()["faces"][0]
    np.testing.assert_allclose(a["landmarks"], b["landmarks"], atol=1e-4)
    np.testing.assert_allclose(b["bbox"], [x, y, w, h], atol=1e-9)


def test_flip_test_can_be_switched_per_request(client, sample, tiny_onnx):
    body = post_image(client, sample["bytes"], [sample["bbox"]], flip_test="false").json()
    assert body["flip_test"] is False
    (want, _), = offline_landmarks(tiny_onnx, sample["bytes"], [sample["bbox"]], False)
    np.testing.assert_allclose(body["faces"][0]["landmarks"], want, atol=1e-5)
    flipped = post_image(client, sample["bytes"], [sample["bbox"]]).json()["faces"][0]["landmarks"]
    assert not np.allclose(flipped, want, atol=1e-3)


def test_flip_test_default_follows_the_setting(app_client, sample):
    client = app_client(flip_test=False)
    assert post_image(client, sample["bytes"]).json()["flip_test"] is False


@pytest.mark.parametrize("in_graph", [False, True], ids=["host-preprocess", "in-graph-preprocess"])
def test_concurrent_requests_are_batched_and_equal_unbatched(app_client, sample, tiny_onnx, in_graph):
    client = app_client(max_batch_size=16, batch_timeout_ms=100.0, preprocess_in_graph=in_graph)
    rng = np.random.default_rng(0)
    x, y, w, h = sample["bbox"]
    boxes = [[x + rng.uniform(-20, 20), y + rng.uniform(-20, 20), w * rng.uniform(0.8, 1.2),
              h * rng.uniform(0.8, 1.2)] for _ in range(12)]
    barrier = threading.Barrier(len(boxes))

    def call(box):
        barrier.wait()
        return post_image(client, sample["bytes"], [box])

    with ThreadPoolExecutor(len(boxes)) as pool:
        responses = list(pool.map(call, boxes))
    assert [r.status_code for r in responses] == [200] * len(boxes)
    reference = offline_landmarks(tiny_onnx, sample["bytes"], boxes, True)
    for response, (want, want_scores) in zip(responses, reference):
        face = response.json()["faces"][0]
        np.testing.assert_allclose(face["landmarks"], want, atol=1e-5)
        np.testing.assert_allclose(face["scores"], want_scores, atol=1e-5)
    metrics = client.get("/metrics").text
    count = _metric(metrics, "landmarks_batch_size_count")
    total = _metric(metrics, "landmarks_batch_size_sum")
    # In the graph: one crop per face (the graph mirrors and merges inside); on the host the
    # mirrored copy is a second network input.
    assert total == (1 if in_graph else 2) * len(boxes)
    assert count < len(boxes), "requests were not batched together"


def test_many_faces_in_one_request_split_over_batches(app_client, sample, tiny_onnx):
    client = app_client(max_batch_size=4)
    x, y, w, h = sample["bbox"]
    boxes = [[x + 3 * i, y - 2 * i, w + i, h] for i in range(7)]  # 14 rows > 4 per batch
    body = post_image(client, sample["bytes"], boxes).json()
    reference = offline_landmarks(tiny_onnx, sample["bytes"], boxes, True)
    assert len(body["faces"]) == 7
    for face, (want, _) in zip(body["faces"], reference):
        np.testing.assert_allclose(face["landmarks"], want, atol=1e-5)


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header claims width x height; no pixel data follows."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF))


ERROR_CASES = [
    # (id, request kwargs builder, expected status, expected code)
    ("text-body", lambda s: dict(content=b"hello", headers={"content-type": "text/plain"}), 415,
     "unsupported_media_type"),
    ("garbage-image", lambda s: dict(files={"image": ("x.jpg", b"not an image at all", "image/jpeg")}),
     415, "unsupported_image"),
    ("zero-bytes", lambda s: dict(files={"image": ("x.jpg", b"", "image/jpeg")}), 415, "unsupported_image"),
    ("truncated-jpeg", lambda s: dict(files={"image": ("x.jpg", s["bytes"][:300], "image/jpeg")}),
     415, "unsupported_image"),
    ("pixel-bomb", lambda s: dict(files={"image": ("x.png", bomb_png(), "image/png")}), 413,
     "image_too_large"),
    ("no-image", lambda s: dict(data={"bboxes": "[[0,0,10,10]]"},
                                files={"other": ("a", b"b", "text/plain")}), 422, "missing_image"),
    ("nan-box", lambda s: _boxes(s, "[[NaN, 0, 10, 10]]"), 422, "invalid_bboxes"),
    ("inf-box", lambda s: _boxes(s, "[[0, 0, Infinity, 10]]"), 422, "invalid_bboxes"),
    ("empty-boxes", lambda s: _boxes(s, "[]"), 422, "invalid_bboxes"),
    ("zero-size", lambda s: _boxes(s, "[[10, 10, 0, 50]]"), 422, "invalid_bboxes"),
    ("negative-size", lambda s: _boxes(s, "[[10, 10, -5, 50]]"), 422, "invalid_bboxes"),
    ("outside", lambda s: _boxes(s, "[[5000, 5000, 10, 10]]"), 422, "invalid_bboxes"),
    ("huge", lambda s: _boxes(s, "[[0, 0, 1e30, 1e30]]"), 422, "invalid_bboxes"),
    ("three-numbers", lambda s: _boxes(s, "[[1, 2, 3]]"), 422, "invalid_bboxes"),
    ("not-json", lambda s: _boxes(s, "[[1, 2"), 422, "invalid_bboxes"),
    ("strings", lambda s: _boxes(s, '[["1", 2, 3, 4]]'), 422, "invalid_bboxes"),
    ("too-many", lambda s: _boxes(s, json.dumps([[0, 0, 50, 50]] * 5000)), 422, "too_many_faces"),
    ("bad-format", lambda s: dict(files={"image": ("x.jpg", s["bytes"], "image/jpeg")},
                                  data={"bbox_format": "cxcywh"}), 422, "invalid_field"),
    ("bad-flip", lambda s: dict(files={"image": ("x.jpg", s["bytes"], "image/jpeg")},
                                data={"flip_test": "maybe"}), 422, "invalid_field"),
    ("bad-base64", lambda s: dict(json={"image": "%%%not base64%%%"}), 422, "invalid_image_encoding"),
    ("json-missing-image", lambda s: dict(json={"bboxes": [[0, 0, 1, 1]]}), 422, "invalid_request"),
    ("json-extra-field", lambda s: dict(json={"image": "", "colour": 1}), 422, "invalid_request"),
    ("json-not-json", lambda s: dict(content=b"{", headers={"content-type": "application/json"}),
     422, "invalid_request"),
]


def _boxes(sample, text):
    return dict(files={"image": ("x.jpg", sample["bytes"], "image/jpeg")}, data={"bboxes": text})


@pytest.mark.parametrize("build, status, code", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_bad_requests_get_their_status_and_the_server_keeps_serving(client, sample, build, status, code):
    response = client.post("/landmarks", **build(sample))
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code and body["detail"]
    assert "Traceback" not in response.text and "/work/" not in response.text
    assert post_image(client, sample["bytes"], [sample["bbox"]]).status_code == 200


def test_body_over_the_byte_limit_is_413(app_client, sample):
    client = app_client(max_body_bytes=4096)
    response = post_image(client, sample["bytes"], [sample["bbox"]])
    assert response.status_code == 413 and response.json()["code"] == "body_too_large"
    small = png_bytes(np.full((16, 16, 3), 128, np.uint8))
    assert post_image(client, small).status_code == 200


def test_pixel_limit_comes_from_settings(app_client, sample):
    client = app_client(max_image_pixels=sample["width"] * sample["height"] - 1)
    response = post_image(client, sample["bytes"])
    assert response.status_code == 413 and response.json()["code"] == "image_too_large"


def test_max_faces_setting(app_client, sample):
    client = app_client(max_faces=2)
    response = post_image(client, sample["bytes"], [sample["bbox"]] * 3)
    assert response.status_code == 422 and response.json()["code"] == "too_many_faces"
    assert post_image(client, sample["bytes"], [sample["bbox"]] * 2).status_code == 200
