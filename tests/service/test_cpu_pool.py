"""The requests' CPU work runs on the runtime's own pool, sized to this worker's share of the
cores, with OpenCV's internal threads off (parallelism comes from concurrent requests)."""

from __future__ import annotations

import threading

import cv2
import numpy as np

from service.api import landmarks as landmarks_route
from service.settings import Settings
from tests.service.conftest import png_bytes, post_image


def test_cores_per_worker_shares_the_affinity_mask(monkeypatch, tiny_onnx):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    share = {n: Settings(model_path=tiny_onnx, workers=n).cores_per_worker for n in (1, 3, 4, 16, 32)}
    assert share == {1: 16, 3: 5, 4: 4, 16: 1, 32: 1}


def test_request_work_runs_on_the_sized_cpu_pool(app_client, monkeypatch):
    seen: list[str] = []
    for name in ("_prepare", "_postprocess"):
        original = getattr(landmarks_route, name)

        def recording(*args, _original=original):
            seen.append(threading.current_thread().name)
            return _original(*args)

        monkeypatch.setattr(landmarks_route, name, recording)
    client = app_client()
    runtime = client.app.state.runtime
    image = png_bytes(np.random.default_rng(0).integers(0, 255, (120, 100, 3), dtype=np.uint8))
    for _ in range(3):
        assert post_image(client, image, [[10, 10, 60, 70]]).status_code == 200
    assert len(seen) == 6 and all(name.startswith("landmarks-cpu") for name in seen), seen
    assert runtime.cpu_threads == max(2, runtime.settings.cores_per_worker)
    assert len(set(seen)) <= runtime.cpu_threads
    assert cv2.getNumThreads() == 1
