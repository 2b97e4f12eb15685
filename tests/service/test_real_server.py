"""The real thing: uvicorn in its own process, on loopback. Bounded in time."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import numpy as np
import pytest

from tests.service.server import Server
from tests.service.test_landmarks_api import offline_landmarks

pytestmark = pytest.mark.slow


def test_make_run_serves_the_model(tiny_onnx, sample):
    server = Server(["make", "--no-print-directory", "run"], tiny_onnx, None)
    try:
        ready = server.wait_ready()
        assert ready["provider"] == "CPUExecutionProvider"
        response = httpx.post(server.url + "/landmarks", timeout=30,
                              files={"image": ("a.jpg", sample["bytes"], "image/jpeg")},
                              data={"bboxes": json.dumps([sample["bbox"]])})
        assert response.status_code == 200
        (want, _), = offline_landmarks(tiny_onnx, sample["bytes"], [sample["bbox"]], True)
        np.testing.assert_allclose(response.json()["faces"][0]["landmarks"], want, atol=1e-5)
    finally:
        server.close()


async def _post(client: httpx.AsyncClient, url: str, sample) -> httpx.Response:
    return await client.post(url + "/landmarks", files={"image": ("a.jpg", sample["bytes"], "image/jpeg")},
                             data={"bboxes": json.dumps([sample["bbox"]])})


def test_overload_sheds_with_503_probes_stay_fast_and_every_200_is_right(w18_onnx, sample):
    """Far more concurrent work than the CPU can do: 200 or 503 only, nothing else."""
    server = Server.python(w18_onnx, max_queue=4, max_batch_size=2, batch_timeout_ms=1,
                           request_timeout_s=30, ort_threads=1)
    (want, _), = offline_landmarks(w18_onnx, sample["bytes"], [sample["bbox"]], True)
    statuses: list[int] = []
    wrong: list[float] = []
    probe_latency: list[float] = []
    missing_retry_after = 0

    async def worker(client, stop_at):
        nonlocal missing_retry_after
        while time.perf_counter() < stop_at:
            try:
                response = await _post(client, server.url, sample)
            except httpx.TransportError as exc:
                statuses.append(type(exc).__name__)
                continue
            statuses.append(response.status_code)
            if response.status_code == 200:
                got = np.asarray(response.json()["faces"][0]["landmarks"])
                wrong.append(float(np.abs(got - want).max()))
            elif response.status_code == 503:
                missing_retry_after += "retry-after" not in response.headers
                await asyncio.sleep(0.01)

    async def prober(client, stop_at):
        while time.perf_counter() < stop_at:
            for path in ("/healthz", "/metrics"):
                t = time.perf_counter()
                response = await client.get(server.url + path)
                probe_latency.append(time.perf_counter() - t)
                assert response.status_code == 200
            await asyncio.sleep(0.1)

    async def main():
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client, \
                httpx.AsyncClient(timeout=10) as probes:
            stop_at = time.perf_counter() + 8.0
            await asyncio.gather(prober(probes, stop_at), *(worker(client, stop_at) for _ in range(24)))

    try:
        server.wait_ready()
        asyncio.run(main())
    finally:
        server.close()
    counts = {s: statuses.count(s) for s in set(statuses)}
    print(f"overload: {len(statuses)} requests, status split {counts}, "
          f"probe p max {max(probe_latency) * 1000:.0f} ms")
    assert set(counts) <= {200, 503}, counts
    assert counts.get(200, 0) > 0 and counts.get(503, 0) > 0, counts
    assert missing_retry_after == 0
    assert max(wrong) <= 1e-4  # every 200 is the right answer
    assert max(probe_latency) < 1.0, "health/metrics blocked during overload"


def test_sigterm_finishes_in_flight_work_refuses_new_and_exits(w18_onnx, sample):
    server = Server.python(w18_onnx, max_batch_size=2, ort_threads=1, shutdown_grace_s=20)
    results: list = []

    async def one(client):
        try:
            response = await _post(client, server.url, sample)
            results.append(response.status_code)
        except httpx.TransportError as exc:
            results.append(type(exc).__name__)

    async def main():
        async with httpx.AsyncClient(timeout=60) as client:
            tasks = [asyncio.create_task(one(client)) for _ in range(6)]
            await asyncio.sleep(0.3)  # requests are queued / running
            sent_at = time.perf_counter()
            server.terminate()
            await asyncio.sleep(0.3)
            refused = False
            try:
                async with httpx.AsyncClient(timeout=5) as fresh:
                    await fresh.get(server.url + "/healthz")
            except httpx.ConnectError:
                refused = True
            await asyncio.gather(*tasks)
            return sent_at, refused

    try:
        server.wait_ready()
        sent_at, refused = asyncio.run(main())
        server.process.wait(30)
        exited_after = time.perf_counter() - sent_at
    finally:
        server.close()
    print(f"sigterm: in-flight results {results}, exit after {exited_after:.2f} s, "
          f"code {server.process.returncode}")
    assert results == [200] * 6, results
    assert refused, "a new connection was accepted after SIGTERM"
    # uvicorn drains, then re-raises the signal it caught (so the exit status says SIGTERM,
    # as shells and supervisors expect); a crash would be another code.
    assert server.process.returncode in (0, -signal.SIGTERM)
    assert exited_after < 20


def test_logs_are_json_lines_with_request_ids(tiny_onnx, sample, tmp_path):
    log_path = tmp_path / "server.log"
    server = Server.python(tiny_onnx, log_path=log_path)
    try:
        server.wait_ready()
        response = httpx.post(server.url + "/landmarks", headers={"x-request-id": "trace-42"},
                              files={"image": ("a.jpg", b"garbage", "image/jpeg")})
        assert response.status_code == 415 and response.headers["x-request-id"] == "trace-42"
    finally:
        server.close()
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any("UNTRAINED MODEL" in r["msg"] and r["level"] == "WARNING" for r in records)
    assert any(r["msg"].startswith("model ") and r.get("provider") == "CPUExecutionProvider"
               for r in records)
    (access,) = [r for r in records if r.get("request_id") == "trace-42"]
    assert access["status"] == 415 and access["route"] == "/landmarks" and "duration_ms" in access
