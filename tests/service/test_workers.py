"""LANDMARKS_WORKERS=2 against the real `python -m service` (untrained tiny model, CPU):
spawned worker processes, each self-checked, metrics added up across them, SIGTERM drains
every worker with nothing lost."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psutil
import pytest

from tests.service.conftest import png_bytes
from tests.service.server import Server

pytestmark = pytest.mark.slow

WORKERS = 2
IMAGE = png_bytes(np.random.default_rng(0).integers(0, 255, (160, 200, 3), dtype=np.uint8))


def boxes_for(i: int) -> list[list[float]]:
    """1 to 3 boxes, so the face total differs from the request count."""
    return [[10.0 + 20 * k, 10.0, 80.0, 90.0] for k in range(1 + i % 3)]


def worker_processes(server: Server) -> list[psutil.Process]:
    """The supervisor's children that run uvicorn workers (multiprocessing's resource
    tracker, also a child, is not one)."""
    return [p for p in psutil.Process(server.pid).children()
            if "spawn_main" in " ".join(p.cmdline())]


def log_records(server: Server) -> list[dict]:
    out = []
    for line in server.log_path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def wait_all_workers_ready(server: Server, pids: set[int], timeout: float = 60) -> list[dict]:
    """/readyz answers from whichever worker takes the connection: wait for every worker's
    own "ready" line. -> the log records."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        records = log_records(server)
        if {r["pid"] for r in records if r["msg"].startswith("ready:")} == pids:
            return records
        time.sleep(0.2)
    raise AssertionError("not every worker became ready")


def post(url: str, i: int) -> tuple[int, int]:
    """One request on a fresh connection -> (status, faces in the answer)."""
    response = httpx.post(url + "/landmarks", timeout=60,
                          files={"image": ("a.png", IMAGE, "image/png")},
                          data={"bboxes": json.dumps(boxes_for(i)), "flip_test": "false"})
    return response.status_code, len(response.json().get("faces", [])) if response.status_code == 200 else 0


def test_two_spawned_workers_self_check_and_metrics_add_up(tiny_onnx, tmp_path):
    with Server.python(tiny_onnx, tmp_path / "server.log", detector="none", workers=WORKERS,
                       request_timeout_s=60) as server:
        server.wait_ready()
        workers = worker_processes(server)
        assert len(workers) == WORKERS  # supervisor + 2 serving processes
        pids = {p.pid for p in workers}
        for worker in workers:
            # Spawned (a fresh interpreter), never forked from the supervisor.
            assert "multiprocessing.spawn" in " ".join(worker.cmdline())
            env = worker.environ()
            cores = len(os.sched_getaffinity(server.pid))
            assert env["LANDMARKS_ORT_THREADS"] == str(max(1, cores // WORKERS))
            assert os.path.isdir(env["PROMETHEUS_MULTIPROC_DIR"])
        # Each worker loaded, warmed and self-checked its own session.
        records = wait_all_workers_ready(server, pids)
        golden = {r["pid"] for r in records if r["msg"].startswith("golden self-check passed")}
        assert golden == pids, (golden, pids)
        assert server.metrics()["landmarks_ready"] == WORKERS  # live workers ready, summed

        # Requests on fresh connections, 4 at a time, until both workers have served some.
        served_by: dict[int, int] = {}
        results: list[tuple[int, int]] = []
        with ThreadPoolExecutor(4) as pool:
            for _ in range(12):
                start = len(results)
                results += pool.map(lambda i: post(server.url, i), range(start, start + 8))
                served_by = {}
                for r in log_records(server):
                    if r.get("route") == "/landmarks" and r.get("status") == 200:
                        served_by[r["pid"]] = served_by.get(r["pid"], 0) + 1
                if len(served_by) == WORKERS:
                    break
        assert set(served_by) == pids, served_by
        assert all(status == 200 for status, _ in results)
        faces = sum(n for _, n in results)
        assert faces == sum(len(boxes_for(i)) for i in range(len(results)))

        metrics = server.metrics()
        assert metrics["landmarks_faces_total"] == faces
        assert metrics['landmarks_requests_total{route="/landmarks",status="200"}'] == len(results)
        assert metrics["landmarks_ready"] == WORKERS and metrics["landmarks_inflight_requests"] == 0
        assert metrics["landmarks_batch_size_sum"] == faces  # flip off: one network input per face


def _multipart(i: int) -> tuple[bytes, str]:
    boundary = f"boundary{i}"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + IMAGE + (
        f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"bboxes\"\r\n\r\n"
        f"{json.dumps(boxes_for(i))}\r\n--{boundary}--\r\n").encode()
    return body, boundary


def _request_in_two_halves(port: int, i: int, headers_sent: threading.Event,
                           go_on: threading.Event, out: dict) -> None:
    """Send the head and half the body, wait, send the rest, read the answer."""
    body, boundary = _multipart(i)
    head = (f"POST /landmarks HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head + body[: len(body) // 2])
        headers_sent.set()
        go_on.wait(60)
        sock.sendall(body[len(body) // 2:])
        received = b""
        while data := sock.recv(65536):
            received += data
    status = int(received.split(b" ", 2)[1]) if received else 0
    answer = json.loads(received.split(b"\r\n\r\n", 1)[1]) if status == 200 else {}
    out[i] = (status, len(answer.get("faces", [])))


def test_sigterm_drains_every_worker_and_loses_no_request(tiny_onnx, tmp_path):
    requests = 8
    with Server.python(tiny_onnx, tmp_path / "server.log", detector="none", workers=WORKERS,
                       request_timeout_s=60, read_timeout_s=60) as server:
        server.wait_ready()
        workers = worker_processes(server)
        wait_all_workers_ready(server, {p.pid for p in workers})
        results: dict[int, tuple[int, int]] = {}
        go_on = threading.Event()
        threads = []
        for i in range(requests):
            sent = threading.Event()
            thread = threading.Thread(target=_request_in_two_halves,
                                      args=(server.port, i, sent, go_on, results))
            thread.start()
            threads.append(thread)
            assert sent.wait(30)
        time.sleep(1.0)  # the workers accept and parse the heads: the requests are in flight
        server.terminate()  # SIGTERM to the supervisor only, as an orchestrator sends it
        time.sleep(1.0)  # the workers are draining now
        assert all(p.is_running() for p in workers)
        go_on.set()
        for thread in threads:
            thread.join(60)
        code = server.process.wait(60)
    assert code == 0
    assert results == {i: (200, len(boxes_for(i))) for i in range(requests)}
    records = log_records(server)
    served = {r["pid"] for r in records if r.get("route") == "/landmarks" and r.get("status") == 200}
    assert served <= {p.pid for p in workers}
    finished = {r["pid"] for r in records if r["msg"].startswith("Finished server process")}
    assert finished == {p.pid for p in workers}  # every worker shut down cleanly
