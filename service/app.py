"""`create_app(settings)`: the FastAPI application and its lifespan.

Start-up opens the model synchronously (a missing or malformed file stops the process
with a clear error), then warms up and self-checks in a worker thread while /healthz
already answers and /readyz says 503 until it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from . import __version__
from .api import landmarks, status
from .api import metrics as metrics_route
from .api.errors import install_error_handlers
from .api.middleware import RequestGuard
from .engine.runtime import LandmarkRuntime
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("service")

DESCRIPTION = """
98-point WFLW face landmarks from mmpose's HRNetV2-W18 + DARK (`hrnetv2_w18_wflw_256x256_dark`,
WFLW test NME 3.98 with flip test), served from ONNX with onnxruntime.

`POST /landmarks` takes an image and, optionally, face boxes (multipart or JSON with base64);
without boxes the built-in detector (RetinaFace MobileNet-0.25) finds the faces. It returns,
per face, the box, the detection, 98 `[x, y]` points in image pixels (or the 68- or 5-point
view) with per-point scores. `POST /landmarks/render` draws them on the image; `GET /` is a
demo page. Errors are JSON with a stable `code`. With `LANDMARKS_API_KEY` set, send it as
`X-API-Key` (the Authorize button here).
"""

STATIC_DIR = Path(__file__).parent / "static"


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; without `settings`, they come from the LANDMARKS_* environment (worker processes
    build their app this way, as an import-string factory)."""
    settings = settings or Settings()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        runtime = LandmarkRuntime(settings, metrics)
        app.state.runtime = runtime
        warmup = asyncio.get_running_loop().run_in_executor(None, runtime.warm_up_and_check)
        app.state.warmup = warmup
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(warmup), 60)
            # Joining the batcher thread blocks: keep the event loop free meanwhile.
            await asyncio.get_running_loop().run_in_executor(None, runtime.stop)

    # FastAPIOffline: FastAPI with /docs and /redoc assets served from a package, not a CDN.
    app = FastAPIOffline(title="Face landmarks", version=__version__, description=DESCRIPTION,
                         lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(landmarks.router)
    app.include_router(status.router)
    app.include_router(metrics_route.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def demo_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")
    app.add_middleware(RequestGuard, settings=settings, metrics=metrics)
    if settings.cors_origin_list:
        # Added last = outermost: the guard's own answers (413, 500) carry CORS headers too,
        # so a browser sees the JSON error instead of an opaque network failure.
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origin_list,
                           allow_methods=["GET", "POST"], allow_headers=["*"],
                           expose_headers=["X-Request-Id", "X-Render-Scale", "X-Warnings", "X-Faces"])
    return app
