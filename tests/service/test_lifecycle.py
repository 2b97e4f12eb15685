"""Readiness, providers, the golden self-check, metrics, model info, auth and load shedding."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.engine.batcher import DynamicBatcher
from service.engine.runtime import LandmarkRuntime
from tests.service.conftest import make_settings, post_image, wait_ready


def test_readyz_is_503_until_warm_up_ends(tiny_onnx, monkeypatch, sample):
    release = threading.Event()
    original = DynamicBatcher.warm_up

    def slow_warm_up(self, *args, **kwargs):
        release.wait(30)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DynamicBatcher, "warm_up", slow_warm_up)
    with TestClient(create_app(make_settings(tiny_onnx))) as client:
        assert client.get("/healthz").status_code == 200  # alive while warming
        response = client.get("/readyz")
        assert response.status_code == 503 and response.json()["state"] == "warming"
        early = post_image(client, sample["bytes"])
        assert early.status_code == 503 and early.json()["code"] == "not_ready"
        release.set()
        body = wait_ready(client)
        assert body["ready"] is True and body["provider"] == "CPUExecutionProvider"
        assert body["warmed_batch_sizes"] == [1, 2, 4, 8]  # every shape the batcher emits
        assert body["golden"]["status"] == "passed"


def test_require_gpu_on_a_cpu_fallback_is_not_ready(app_client):
    client = app_client(providers="cuda,cpu", require_gpu=True)
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 503 and body["state"] == "not_ready"
    assert "CPUExecutionProvider" in body["reason"] and "REQUIRE_GPU" in body["reason"]
    assert body["requested_providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_provider_in_use_is_reported_everywhere(app_client):
    client = app_client(providers="cuda,cpu")  # no GPU here: falls back, and says so
    assert client.get("/readyz").json()["provider"] == "CPUExecutionProvider"
    assert client.get("/model").json()["provider"] == "CPUExecutionProvider"
    metrics = client.get("/metrics").text
    assert 'provider="CPUExecutionProvider"' in metrics and "landmarks_model_info{" in metrics


def corrupt_weights(src, dst):
    """Same graph, same metadata (golden record included), one conv's weights perturbed."""
    proto = onnx.load(str(src))
    init = max(proto.graph.initializer, key=lambda i: np.prod(i.dims))
    values = onnx.numpy_helper.to_array(init).copy()
    values *= -1.0
    init.CopyFrom(onnx.numpy_helper.from_array(values, init.name))
    onnx.save(proto, str(dst))
    return dst


def test_corrupted_weights_fail_the_golden_self_check(app_client, tiny_onnx, tmp_path):
    bad = corrupt_weights(tiny_onnx, tmp_path / "corrupt.onnx")
    onnx.checker.check_model(onnx.load(str(bad)))  # still a valid ONNX file
    client = app_client(model=bad)
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 503 and body["state"] == "not_ready"
    assert "golden self-check failed" in body["reason"]
    deviation = float(body["reason"].split("deviate by up to ")[1].split(" px")[0])
    assert deviation > 0.5


def test_model_without_golden_data_is_served_with_the_check_skipped(app_client, tiny_onnx, tmp_path, caplog):
    proto = onnx.load(str(tiny_onnx))
    kept = [p for p in proto.metadata_props if p.key != "landmarks.golden"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    with caplog.at_level("WARNING"):
        client = app_client(model=tmp_path / "foreign.onnx")
    body = client.get("/readyz").json()
    assert body["ready"] is True and body["golden"]["status"] == "skipped"
    assert any("golden self-check skipped" in r.getMessage() for r in caplog.records)


def test_model_without_any_metadata_uses_wflw_defaults(app_client, tiny_onnx, tmp_path):
    proto = onnx.load(str(tiny_onnx))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    client = app_client(model=tmp_path / "bare.onnx")
    model = client.get("/model").json()
    assert model["num_keypoints"] == 98 and model["input_size"] == [256, 256]
    assert model["trained"] is None and model["warnings"] == []


def test_missing_model_file_stops_start_up_with_a_clear_error(tiny_onnx, tmp_path):
    from service.engine.session import ModelLoadError

    with pytest.raises(ModelLoadError, match="model file not found.*make model"), \
            TestClient(create_app(make_settings(tmp_path / "absent.onnx"))):
        pass


def test_model_endpoint_describes_the_wflw_schema(client):
    body = client.get("/model").json()
    groups = {g["name"]: (g["start"], g["stop"]) for g in body["groups"]}
    assert groups == {"contour": (0, 33), "brows": (33, 51), "nose": (51, 60), "eyes": (60, 76),
                      "mouth": (76, 96), "pupils": (96, 98)}
    assert len(body["flip_pairs"]) == 44 and [60, 72] in body["flip_pairs"]
    names = body["keypoint_names"]
    assert len(set(names)) == 98 and "pupil" in names[96] and "pupil" in names[97]
    assert body["heatmap_size"] == [64, 64]
    assert len(body["sha256"]) == 64


def test_metrics_expose_every_required_series(client, sample):
    post_image(client, sample["bytes"])
    client.post("/landmarks", content=b"x", headers={"content-type": "text/plain"})
    text = client.get("/metrics").text
    for series in ("landmarks_requests_total{", "landmarks_request_duration_seconds_bucket{",
                   "landmarks_batch_size_bucket{", "landmarks_queue_depth ",
                   "landmarks_inflight_requests ", "landmarks_faces_total ",
                   "landmarks_rejections_total{", "landmarks_model_info{"):
        assert series in text, series
    for stage in ("decode", "preprocess", "queue", "inference", "postprocess"):
        assert f'landmarks_stage_duration_seconds_count{{stage="{stage}"}}' in text
    assert 'landmarks_requests_total{route="/landmarks",status="200"} 1.0' in text
    assert 'landmarks_rejections_total{reason="unsupported_media_type"} 1.0' in text
    names = [line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"]
    assert all(n.startswith("landmarks_") for n in names)


def test_request_id_is_echoed_or_generated(client):
    assert client.get("/healthz", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32
    # Hostile ids are not echoed into headers and logs.
    assert client.get("/healthz", headers={"x-request-id": "a b\tc"}).headers["x-request-id"] != "a b\tc"
    error = client.post("/landmarks", content=b"x", headers={"content-type": "text/plain",
                                                             "x-request-id": "req-9"})
    assert error.json()["request_id"] == "req-9"


def test_api_key_protects_work_but_not_probes(app_client, sample):
    client = app_client(api_key="s3cret")
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 200
    denied = post_image(client, sample["bytes"])
    assert denied.status_code == 401 and denied.json()["code"] == "unauthorized"
    assert client.get("/model").status_code == 401
    wrong = client.post("/landmarks", headers={"x-api-key": "s3creT"},
                        files={"image": ("a.jpg", sample["bytes"], "image/jpeg")})
    assert wrong.status_code == 401
    ok = client.post("/landmarks", headers={"x-api-key": "s3cret"},
                     files={"image": ("a.jpg", sample["bytes"], "image/jpeg")})
    assert ok.status_code == 200
    bearer = client.get("/model", headers={"authorization": "Bearer s3cret"})
    assert bearer.status_code == 200


def test_cors_is_off_unless_configured(app_client):
    plain = app_client()
    assert "access-control-allow-origin" not in plain.get(
        "/healthz", headers={"origin": "https://example.com"}).headers
    cors = app_client(cors_origins="https://example.com")
    assert cors.get("/healthz", headers={"origin": "https://example.com"}).headers[
        "access-control-allow-origin"] == "https://example.com"


def _slow_runtime(monkeypatch, delay: float):
    """Every served graph run sleeps `delay` once the test sets `runtime._slow`."""
    original = LandmarkRuntime._open_served_graphs

    def slow_graphs(self):
        in_graph, runs = original(self)

        def slowed(run):
            def run_slowly(batch):
                if getattr(self, "_slow", False):
                    time.sleep(delay)
                return run(batch)
            return run_slowly

        if callable(runs):
            return in_graph, slowed(runs)
        return in_graph, {key: slowed(run) for key, run in runs.items()}

    monkeypatch.setattr(LandmarkRuntime, "_open_served_graphs", slow_graphs)


def test_full_queue_sheds_with_503_and_retry_after(app_client, sample, monkeypatch):
    _slow_runtime(monkeypatch, 0.3)
    client = app_client(max_queue=2, max_batch_size=2, batch_timeout_ms=0.0)
    client.app.state.runtime._slow = True
    barrier = threading.Barrier(8)

    def call(_):
        barrier.wait()
        return post_image(client, sample["bytes"])

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(call, range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 503}, statuses
    shed = [r for r in responses if r.status_code == 503]
    assert all(r.json()["code"] == "queue_full" and r.headers["retry-after"] for r in shed)
    assert client.get("/healthz").status_code == 200
    assert 'landmarks_rejections_total{reason="queue_full"}' in client.get("/metrics").text


def test_request_past_the_timeout_gets_504(app_client, sample, monkeypatch):
    _slow_runtime(monkeypatch, 0.5)
    client = app_client(request_timeout_s=0.2)
    client.app.state.runtime._slow = True
    response = post_image(client, sample["bytes"])
    assert response.status_code == 504 and response.json()["code"] == "timeout"
    client.app.state.runtime._slow = False
    time.sleep(0.6)  # the abandoned batch finishes; the server goes on serving
    assert post_image(client, sample["bytes"]).status_code == 200


def test_openapi_documents_both_request_forms(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/landmarks"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    responses = spec["paths"]["/landmarks"]["post"]["responses"]
    assert {"200", "413", "415", "422", "503", "504"} <= set(responses)
    assert json.dumps(spec)  # serialisable
