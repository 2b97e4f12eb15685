"""FastAPI dependencies: the API key and the ready runtime.

As dependencies (not middleware) they are declared per router, so the OpenAPI document shows
the security scheme ("Try it out" sends the key), new routes are covered by including them
in a protected router, and CORS preflights (answered by the CORS middleware before routing)
never meet the key check.
"""

from __future__ import annotations

import hmac

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.engine.runtime import LandmarkRuntime

from .errors import ApiError

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="Required when the server sets LANDMARKS_API_KEY")
bearer = HTTPBearer(auto_error=False, description="The same key as `Authorization: Bearer <key>`")


# Dependencies are `async def`: FastAPI runs plain `def` ones in a worker thread, a thread
# hand-off per dependency per request.
async def require_api_key(request: Request, key: str | None = Security(api_key_header),
                    credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
    settings = request.app.state.settings
    if settings.api_key is None:
        return
    given = key or (credentials.credentials if credentials else "")
    expected = settings.api_key.get_secret_value().encode("utf-8")
    if not hmac.compare_digest(given.encode("utf-8", "replace"), expected):
        raise ApiError(401, "unauthorized", "missing or wrong API key (X-API-Key header)",
                       {"WWW-Authenticate": "ApiKey"})


async def ready_runtime(request: Request) -> LandmarkRuntime:
    """The runtime, once loaded, warmed and self-checked; 503 + Retry-After before that."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.readiness.ready:
        state = runtime.readiness.state if runtime else "loading"
        reason = runtime.readiness.reason if runtime else ""
        raise ApiError(503, "not_ready", f"model not ready ({state}{': ' + reason if reason else ''})",
                       {"Retry-After": "5"})
    return runtime


async def loaded_runtime(request: Request) -> LandmarkRuntime:
    """The runtime once the model is open (warming or not); 503 before that."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise ApiError(503, "not_ready", "model not loaded yet", {"Retry-After": "5"})
    return runtime


protected = [Depends(require_api_key)]
