"""Service fixtures: an app on the tiny random-weights model, CPU provider, ready to serve."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import DATA

SAMPLES = DATA / "wflw_samples"


def make_settings(model: Path, **overrides) -> Settings:
    values = dict(model_path=model, providers="cpu", detector="none", max_batch_size=8, batch_timeout_ms=2.0,
                  ort_threads=1)
    values.update(overrides)
    return Settings(**values)


def wait_ready(client: TestClient, timeout: float = 60.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        response = client.get("/readyz")
        if response.status_code == 200 or response.json().get("state") == "not_ready":
            return response.json()
        time.sleep(0.02)
    raise AssertionError("service did not become ready")


@pytest.fixture()
def app_client(tiny_onnx):
    """Factory: start an app with overrides, wait until ready (or not_ready), yield a client."""
    clients = []

    def start(model: Path | None = None, wait: bool = True, **overrides) -> TestClient:
        client = TestClient(create_app(make_settings(model or tiny_onnx, **overrides)))
        client.__enter__()
        clients.append(client)
        if wait:
            wait_ready(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture()
def client(app_client):
    return app_client()


@pytest.fixture(scope="session")
def sample():
    """The real WFLW image with one annotated face, its bytes and its mmpose annotation."""
    ann = json.loads((SAMPLES / "test_wflw.json").read_text())
    image = next(i for i in ann["images"] if i["file_name"].startswith("36_"))
    face = next(a for a in ann["annotations"] if a["image_id"] == image["id"])
    data = (SAMPLES / image["file_name"]).read_bytes()
    return {"bytes": data, "bbox": face["bbox"], "width": image["width"], "height": image["height"],
            "keypoints": np.asarray(face["keypoints"], np.float64).reshape(-1, 3)[:, :2]}


def png_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def post_image(client: TestClient, data: bytes, bboxes=None, **fields):
    form = {k: v for k, v in fields.items()}
    if bboxes is not None:
        form["bboxes"] = bboxes if isinstance(bboxes, str) else json.dumps(bboxes)
    return client.post("/landmarks", files={"image": ("face.jpg", data, "image/jpeg")}, data=form)
