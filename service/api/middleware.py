"""What every request needs around the routes, and the read deadline of every connection.

`RequestGuard`, one pure-ASGI middleware (not BaseHTTPMiddleware: streaming stays intact and
it costs microseconds), gives each request an id (echoed in `X-Request-Id`, carried by every
log line of the request), enforces the body-size limit, answers any unhandled exception
with one logged JSON 500, and records the request metrics and access log line. It also
turns a failed application start-up into one readable line.

`read_timeout_protocol(seconds)` is uvicorn's HTTP protocol with a request deadline: ASGI
middleware only runs once the request head has been parsed, so a client that trickles its
headers (or never finishes its body) must be cut off at the connection level.

The API key is checked per route by a FastAPI dependency (`service.api.deps`), so CORS
preflights and the OpenAPI security scheme work; this middleware knows no route names.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import secrets
import sys
import time

import h11
from starlette.routing import Match
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.logs import request_id_var

from .errors import ApiError

log = logging.getLogger("service.access")
http_log = logging.getLogger("service.http")

# Probes and scrapes are frequent and uninteresting: no access line for them.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
# Status recorded for a request whose client hung up before sending its whole body (nginx's
# "client closed request"); the response, if any, reaches no one.
CLIENT_CLOSED = 499


class _Exchange:
    """What the guard learns about one request while the app handles it."""

    __slots__ = ("body_bytes", "body_complete", "in_flight", "replaced", "response_started",
                 "status", "too_large")

    def __init__(self) -> None:
        self.status = 500  # what is recorded if the app never starts a response
        self.response_started = False
        self.body_bytes = 0
        self.body_complete = False
        self.in_flight = False
        self.too_large = False
        self.replaced = False  # the app's response was swapped for the guard's 413


class RequestGuard:
    def __init__(self, app, settings, metrics):
        self.app = app
        self.max_body = settings.max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, _one_line_startup_failure(send))
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = _clean_request_id(headers.get("x-request-id")) or _new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        exchange = _Exchange()
        send_with_id = self._sender(send, exchange, request_id)
        try:
            rejection = self._reject_early(headers)
            if rejection is not None:
                status, code, detail = rejection
                await _send_json(send_with_id, status, code, detail, request_id)
                self.metrics.rejections.labels(code).inc()
            else:
                await self.app(scope, self._receiver(receive, exchange, scope), send_with_id)
        except Exception:
            # Logged here, inside the request's context: once, with this request's id (an
            # outer handler would run after the id is reset, and uvicorn would log it again).
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            self.metrics.rejections.labels("internal_error").inc()
            if not exchange.response_started:
                await _send_json(send_with_id, 500, "internal_error", "internal server error; see the "
                                 "server log for this request id", request_id)
            # A response already under way cannot become a 500; uvicorn closes the connection.
        finally:
            duration = time.perf_counter() - started
            status = exchange.status
            route = _route_label(scope)
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.request_latency.labels(route).observe(duration)
            if exchange.in_flight:
                self.metrics.inflight.dec()
            if route not in QUIET_ROUTES:
                log.info("%s %s %s", scope["method"], scope["path"], status,
                         extra={"route": route, "status": status, "duration_ms": round(duration * 1e3, 2)})
            request_id_var.reset(token)

    def _reject_early(self, headers: dict[str, str]):
        """(status, code, detail) for a request refused on its headers alone, else None."""
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return 400, "invalid_content_length", "Content-Length is not a number"
            if int(length) > self.max_body:
                return 413, "body_too_large", (f"body of {int(length)} bytes exceeds the "
                                               f"{self.max_body}-byte limit")
        return None

    def _sender(self, send, exchange: _Exchange, request_id: str):
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message):
            kind = message["type"]
            if kind == "http.response.start":
                if exchange.too_large and message["status"] != 413:
                    # The body went over the limit while the app read it, and the app answered
                    # something else (e.g. a parser error): the limit is the real answer.
                    exchange.replaced = True
                    exchange.status, exchange.response_started = 413, True
                    self.metrics.rejections.labels("body_too_large").inc()
                    await _send_json(send, 413, "body_too_large",
                                     f"body exceeds the {self.max_body}-byte limit", request_id,
                                     [header])
                    return
                exchange.status = message["status"]
                exchange.response_started = True
                message = {**message, "headers": [*message.get("headers", ()), header]}
            elif kind == "http.response.body" and exchange.replaced:
                return
            await send(message)

        return send_with_id

    def _receiver(self, receive, exchange: _Exchange, scope):
        """The app's `receive`: counts body bytes (chunked uploads carry no Content-Length),
        marks the request in flight once its whole body is here, and turns a client gone
        mid-body into an error the app cannot mistake for a bad body."""
        limit = self.max_body
        counts_as_work = scope["method"] == "POST"

        async def receive_limited():
            message = await receive()
            kind = message["type"]
            if kind == "http.request":
                exchange.body_bytes += len(message.get("body", b""))
                if exchange.body_bytes > limit:
                    exchange.too_large = True
                    raise ApiError(413, "body_too_large", f"body exceeds the {limit}-byte limit")
                if not message.get("more_body", False) and not exchange.body_complete:
                    exchange.body_complete = True
                    # In flight from the moment the work can start: a slow or stalled upload
                    # costs the server nothing, so it must not drive the autoscaler.
                    if counts_as_work:
                        exchange.in_flight = True
                        self.metrics.inflight.inc()
            elif kind == "http.disconnect" and not exchange.body_complete:
                if scope.get("state", {}).get("read_timed_out"):
                    raise ApiError(408, "read_timeout", "the request body did not arrive in time")
                raise ApiError(CLIENT_CLOSED, "client_closed_request",
                               "the client closed the connection before sending the whole body")
            return message

        return receive_limited


def _route_label(scope) -> str:
    """The route template the request matched (e.g. `/landmarks`), else `other`: bounded
    label values, whatever paths clients invent."""
    route = scope.get("route")
    if route is None:  # answered before routing (early rejection): match it now
        app = scope.get("app")
        for candidate in getattr(app, "routes", ()):
            if candidate.matches(scope)[0] is Match.FULL:
                route = candidate
                break
    return getattr(route, "path", None) or "other"


# Request ids: unique, not secret. A random prefix per process plus a counter costs no
# system call per request (uuid4 reads the OS random source each time).
_ID_PREFIX = secrets.token_hex(6)
_id_counter = itertools.count(1)


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):020x}"


def _clean_request_id(value: str | None) -> str | None:
    """Echo a caller's id only if it is short and printable (it goes into logs and headers)."""
    if not value or len(value) > 128 or not all(c.isalnum() or c in "-_.:" for c in value):
        return None
    return value


async def _send_json(send, status: int, code: str, detail: str, request_id: str,
                     extra_headers=()) -> None:
    body = json.dumps({"code": code, "detail": detail, "request_id": request_id}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *extra_headers]})
    await send({"type": "http.response.body", "body": body})


def _one_line_startup_failure(send):
    """Starlette reports a failed start-up as the whole traceback, which uvicorn logs as one
    25-line message; replace it with the exception's own message (the service's start-up
    errors say what to do), keeping the traceback at DEBUG."""

    async def send_startup(message):
        if message["type"] == "lifespan.startup.failed":
            exc = sys.exc_info()[1]  # Starlette sends this from inside its `except` block
            if exc is not None:
                log.debug("start-up traceback:\n%s", message.get("message", ""))
                text = str(exc) or type(exc).__name__
                if type(exc).__name__ != "ModelLoadError":
                    text = f"{type(exc).__name__}: {text}"
                message = {**message, "message": f"cannot start: {text}"}
        await send(message)

    return send_startup


# ------------------------------------------------------------------ connection read deadline


class _ReadDeadline:
    """Mixin for uvicorn's HTTP protocols: a request must arrive whole (head and body) within
    `read_timeout` seconds of its first byte (of the connection, for the first request), or
    the connection is answered 408 and closed.

    uvicorn's `timeout_keep_alive` only covers idle time between requests and is reset by
    every byte, so a client trickling its request holds a connection (and, mid-body, an
    application task) forever. The deadline is absolute (trickling does not extend it), is
    disarmed the moment the request has been received, and never fires while the server is
    the slow side (reading paused by back-pressure, or a received request being processed).
    """

    def __init__(self, *args, read_timeout: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.read_timeout = read_timeout
        self._deadline = None
        self._cycle_at_arming = None

    def _arm_deadline(self) -> None:
        if self._deadline is None:
            self._cycle_at_arming = self.cycle
            self._deadline = self.loop.call_later(self.read_timeout, self._read_deadline_passed)

    def _disarm_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_deadline()  # a client that connects and sends nothing is held to it too

    def connection_lost(self, exc) -> None:
        self._disarm_deadline()
        super().connection_lost(exc)

    def _read_deadline_passed(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        processing = cycle is not None and not cycle.more_body and not cycle.response_complete
        if processing or self.flow.read_paused:
            self._arm_deadline()  # the server is the slow side; the client is not to blame
            return
        # The request under the deadline has a cycle only once its head is parsed.
        current = cycle if cycle is not None and cycle is not self._cycle_at_arming else None
        request_id = None
        if current is not None:
            state = current.scope.setdefault("state", {})
            state["read_timed_out"] = True  # the app then sees 408, not a parser error
            request_id = state.get("request_id")
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        http_log.info("closing the connection from %s: request not received within %g s "
                      "(LANDMARKS_READ_TIMEOUT_S)", client, self.read_timeout)
        if current is None or not current.response_started:
            self.transport.write(_timeout_response(self.read_timeout, request_id))
        self.transport.close()


def _timeout_response(seconds: float, request_id: str | None) -> bytes:
    body = json.dumps({"code": "read_timeout", "detail": f"the request did not arrive within {seconds:g} s",
                       "request_id": request_id}).encode()
    head = (f"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n")
    if request_id:
        head += f"x-request-id: {request_id}\r\n"
    return head.encode("latin-1") + b"\r\n" + body


class ReadDeadlineH11Protocol(_ReadDeadline, H11Protocol):
    """uvicorn's pure-Python HTTP/1.1 protocol with the read deadline."""

    def data_received(self, data: bytes) -> None:
        self._arm_deadline()  # no-op while armed: trickling does not move the deadline
        super().data_received(data)
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):  # request complete (or dead)
            self._disarm_deadline()


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools not installed: uvicorn uses h11
    HttpToolsProtocol = None
else:

    class ReadDeadlineHttpToolsProtocol(_ReadDeadline, HttpToolsProtocol):
        """uvicorn's httptools (C parser) protocol with the read deadline."""

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_deadline()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm_deadline()


def read_timeout_protocol(read_timeout_s: float, http: str = "auto"):
    """The value for uvicorn's `http=`: its protocol (`auto`: httptools when installed, as
    uvicorn picks, else h11) with the read deadline. A `functools.partial` of a module-level
    class, so it pickles into spawned worker processes."""
    if http == "httptools" or (http == "auto" and HttpToolsProtocol is not None):
        if HttpToolsProtocol is None:
            raise RuntimeError("http='httptools' needs the httptools package")
        return functools.partial(ReadDeadlineHttpToolsProtocol, read_timeout=read_timeout_s)
    return functools.partial(ReadDeadlineH11Protocol, read_timeout=read_timeout_s)
