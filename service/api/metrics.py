"""GET /metrics: Prometheus text. Bypasses the batcher queue, so it answers under load.

With several workers the answer combines every worker's values (see service.metrics).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

router = APIRouter()


@router.get("/metrics", summary="Prometheus metrics (all series prefixed landmarks_)",
            response_class=Response)
async def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type)
