"""HTTP hardening against real servers: unexpected 500s, the body limit on chunked uploads,
and the read deadline of stalled connections (raw sockets, a 1 s LANDMARKS_READ_TIMEOUT_S).

Two kinds of real server: `python -m service` in a subprocess (the wiring of the settings),
and uvicorn in a thread of this process running the service's app plus test-only routes
(a route that raises, a slow route), with the same HTTP protocol `python -m service` uses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import Request

from service.__main__ import bind_socket
from service.api.middleware import read_timeout_protocol
from service.app import create_app
from service.logs import JsonFormatter
from tests.service.conftest import make_settings, png_bytes
from tests.service.server import Server

PROTOCOLS = ["h11", "httptools"]


class JsonLines(logging.Handler):
    """Collects the service's JSON log lines (formatted as in production)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.records: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(json.loads(self.format(record)))


@contextlib.contextmanager
def served_in_thread(app, http: str = "auto", read_timeout_s: float = 30.0):
    """uvicorn in a thread on a free loopback port, with the service's read-deadline protocol;
    yields (base URL, collected JSON log records). Logs of the app *and* uvicorn are caught."""
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, http=read_timeout_protocol(read_timeout_s, http), log_config=None,
                            access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    lines = JsonLines()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(lines)
    root.setLevel(logging.INFO)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        else:
            raise AssertionError("in-thread server did not become ready")
        yield f"http://127.0.0.1:{port}", lines.records
    finally:
        server.should_exit = True
        thread.join(30)
        root.removeHandler(lines)
        root.setLevel(old_level)


def app_with_test_routes(model):
    app = create_app(make_settings(model))

    @app.get("/test/boom")
    async def boom():
        raise RuntimeError("boom for the test")

    @app.post("/test/echo")
    async def echo(request: Request):
        return {"bytes": len(await request.body())}

    @app.post("/test/slow")
    async def slow(seconds: float = 2.0):
        import asyncio

        await asyncio.sleep(seconds)
        return {"slept": seconds}

    return app


def raw_exchange(port: int, chunks: list[bytes], pause: float = 0.0, wait: float = 10.0):
    """Send `chunks` (sleeping `pause` between them), then read until the server closes.
    -> (bytes received, seconds from the last chunk sent to the close, closed?)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        try:
            for i, chunk in enumerate(chunks):
                if i and pause:
                    time.sleep(pause)
                if chunk:
                    sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):  # closed on us mid-send
            pass
        sent = time.monotonic()
        received = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return received, time.monotonic() - sent, True
                received += data
        except ConnectionResetError:
            return received, time.monotonic() - sent, True
        except TimeoutError:
            return received, time.monotonic() - sent, False


# ------------------------------------------------------------------------------ 500s


def test_a_500_is_logged_once_with_its_own_request_id_and_answers_with_it(tiny_onnx):
    with served_in_thread(app_with_test_routes(tiny_onnx)) as (url, records):
        with httpx.Client(base_url=url, timeout=10) as client:  # one keep-alive connection
            first = client.get("/healthz", headers={"X-Request-Id": "before-1"})
            assert first.status_code == 200
            error = client.get("/test/boom", headers={"X-Request-Id": "boom-2"})
            after = client.get("/healthz", headers={"X-Request-Id": "after-3"})
        with httpx.Client(base_url=url, timeout=10) as fresh:  # and on a new connection
            generated = fresh.get("/test/boom")
    assert error.status_code == 500 and error.headers["x-request-id"] == "boom-2"
    assert error.json() == {"code": "internal_error", "request_id": "boom-2",
                            "detail": error.json()["detail"]}
    assert "boom for the test" not in error.text  # no internals in the body
    assert after.status_code == 200  # the keep-alive connection survived the 500
    new_id = generated.headers["x-request-id"]
    assert generated.status_code == 500 and generated.json()["request_id"] == new_id
    failures = [r for r in records if r["level"] in ("ERROR", "CRITICAL")]
    assert [r.get("request_id") for r in failures] == ["boom-2", new_id], failures
    assert all("boom for the test" in r.get("exc", "") for r in failures)
    access = {r["request_id"]: r for r in records if r["logger"] == "service.access"}
    assert access["boom-2"]["status"] == 500 and access["boom-2"]["route"] == "/test/boom"


# ----------------------------------------------------------------------- body limit


def test_a_chunked_multipart_body_over_the_limit_is_413(tiny_onnx):
    limit = 64 * 1024
    boundary = "b0undary"
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    image = png_bytes(np.full((96, 96, 3), 127, np.uint8))
    with Server.python(tiny_onnx, detector="none", max_body_bytes=limit) as server:
        server.wait_ready()
        # Generators: httpx sends them chunked, with no Content-Length to check up front.
        over = httpx.post(server.url + "/landmarks", timeout=30, headers=headers,
                          content=iter([head, *[b"\xff" * 16 * 1024] * 8, tail]))
        assert "content-length" not in over.request.headers
        assert over.status_code == 413, over.text
        assert over.json()["code"] == "body_too_large"
        assert over.headers["x-request-id"] == over.json()["request_id"]
        under = httpx.post(server.url + "/landmarks", timeout=30, headers=headers,
                           content=iter([head, image, tail]))
        assert under.status_code == 200, under.text
        metrics = server.metrics()
        assert metrics['landmarks_rejections_total{reason="body_too_large"}'] == 1
        assert metrics['landmarks_requests_total{route="/landmarks",status="413"}'] == 1


# -------------------------------------------------------------------- read deadline


def test_stalled_connections_are_closed_and_never_in_flight(tiny_onnx):
    with Server.python(tiny_onnx, detector="none", read_timeout_s=1) as server:
        server.wait_ready()
        port = server.port

        # Headers half sent.
        received, waited, closed = raw_exchange(port, [b"POST /landmarks HTTP/1.1\r\nHost: x\r\n"])
        assert closed and 0.5 < waited < 5, (waited, received)
        assert received.startswith(b"HTTP/1.1 408")

        # Nothing sent at all.
        received, waited, closed = raw_exchange(port, [b""])
        assert closed and 0.5 < waited < 5

        # Headers trickled a byte at a time past the deadline: the deadline does not move.
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        started = time.monotonic()
        received, _, closed = raw_exchange(port, [request[i:i + 1] for i in range(12)], pause=0.15)
        assert closed and time.monotonic() - started < 5 and not received.startswith(b"HTTP/1.1 200")

        # A body that stops: in flight never, then closed with 408.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
            stalled.sendall(b"POST /landmarks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 5000\r\n\r\n{\"image\": \"")
            time.sleep(0.3)
            assert server.metrics()["landmarks_inflight_requests"] == 0
            stalled_at = time.monotonic()
            data = stalled.recv(65536)
            assert data.startswith(b"HTTP/1.1 408") and 0.3 < time.monotonic() - stalled_at < 5
        metrics = server.metrics()
        assert metrics["landmarks_inflight_requests"] == 0
        assert metrics.get('landmarks_requests_total{route="/landmarks",status="408"}') == 1
        assert metrics.get('landmarks_rejections_total{reason="read_timeout"}') == 1

        # A complete request within the deadline is served; the server is unharmed.
        assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("http", PROTOCOLS)
def test_the_read_deadline_with_each_uvicorn_protocol(tiny_onnx, http):
    with served_in_thread(app_with_test_routes(tiny_onnx), http, read_timeout_s=1.0) as (url, records):
        port = int(url.rsplit(":", 1)[1])
        received, waited, closed = raw_exchange(port, [b"GET /healthz HTTP/1.1\r\nHo"])
        assert closed and 0.5 < waited < 5 and received.startswith(b"HTTP/1.1 408")
        body_stall = b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"
        received, waited, closed = raw_exchange(port, [body_stall])
        assert closed and 0.5 < waited < 5 and received.startswith(b"HTTP/1.1 408")
        # The server being slow (2 s of work > the 1 s deadline) is not the client's fault,
        # and a keep-alive connection gets a new deadline per request.
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.post("/test/slow?seconds=2").json() == {"slept": 2.0}
            time.sleep(0.5)
            assert client.post("/test/slow?seconds=0.1").status_code == 200
    # The stalled body reached the app as a 408, not as an unhandled error or a parser error.
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")]
    statuses = [r["status"] for r in records if r["logger"] == "service.access" and r["route"] == "/test/echo"]
    assert statuses == [408]
