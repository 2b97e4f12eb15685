"""One pure-ASGI middleware for what every request needs before routing: a request id,
the body-size limit, the API key, and the request metrics and log line.

Pure ASGI (not BaseHTTPMiddleware) keeps streaming intact and costs microseconds.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid

from service.logs import request_id_var

from .errors import ApiError

log = logging.getLogger("service.access")

KNOWN_ROUTES = {"/landmarks", "/healthz", "/readyz", "/metrics", "/model", "/docs", "/openapi.json"}
# Probes, metrics and the API description stay open so orchestrators and scrapers work.
OPEN_ROUTES = {"/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/docs/oauth2-redirect"}


class RequestGuard:
    def __init__(self, app, settings, metrics):
        self.app = app
        self.max_body = settings.max_body_bytes
        key = settings.api_key.get_secret_value() if settings.api_key else ""
        self.api_key = key.encode() if key else None
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = _clean_request_id(headers.get("x-request-id")) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        path = scope["path"]
        route = path if path in KNOWN_ROUTES else "other"
        started = time.perf_counter()
        status_holder = {"status": 500}
        is_work = route == "/landmarks"
        if is_work:
            self.metrics.inflight.inc()

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", request_id.encode())]
            await send(message)

        try:
            rejection = self._reject_early(path, headers)
            if rejection is not None:
                status, code, detail, extra = rejection
                await _send_json(send_with_id, status, code, detail, request_id, extra)
                self.metrics.rejections.labels(code).inc()
            else:
                await self.app(scope, self._limited(receive), send_with_id)
        finally:
            duration = time.perf_counter() - started
            status = status_holder["status"]
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.request_latency.labels(route).observe(duration)
            if is_work:
                self.metrics.inflight.dec()
            if route not in ("/healthz", "/readyz", "/metrics"):
                log.info("%s %s %s", scope["method"], path, status,
                         extra={"route": route, "status": status, "duration_ms": round(duration * 1e3, 2)})
            request_id_var.reset(token)

    def _reject_early(self, path: str, headers: dict[str, str]):
        if self.api_key is not None and path not in OPEN_ROUTES:
            given = headers.get("x-api-key", "")
            auth = headers.get("authorization", "")
            if not given and auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not hmac.compare_digest(given.encode("utf-8", "replace"), self.api_key):
                return 401, "unauthorized", "missing or wrong API key (X-API-Key header)", \
                    [(b"www-authenticate", b"ApiKey")]
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return 400, "invalid_content_length", "Content-Length is not a number", []
            if int(length) > self.max_body:
                return 413, "body_too_large", f"body of {int(length)} bytes exceeds the " \
                    f"{self.max_body}-byte limit", []
        return None

    def _limited(self, receive):
        """Count streamed body bytes too: chunked uploads carry no Content-Length."""
        received = 0
        limit = self.max_body

        async def wrapped():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ApiError(413, "body_too_large", f"body exceeds the {limit}-byte limit")
            return message

        return wrapped


def _clean_request_id(value: str | None) -> str | None:
    """Echo a caller's id only if it is short and printable (it goes into logs and headers)."""
    if not value or len(value) > 128 or not all(c.isalnum() or c in "-_.:" for c in value):
        return None
    return value


async def _send_json(send, status: int, code: str, detail: str, request_id: str, extra_headers) -> None:
    body = json.dumps({"code": code, "detail": detail, "request_id": request_id}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *extra_headers]})
    await send({"type": "http.response.body", "body": body})
