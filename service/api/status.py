"""Liveness, readiness and model description. None of them touch the
batcher queue, so they answer even when inference is saturated."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.pipeline.keypoints import WFLW_GROUPS

from .schemas import ModelResponse, ReadyResponse

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process is up and its event loop answers")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: model loaded, warmed and self-checked",
            response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def readyz(request: Request) -> JSONResponse:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        return JSONResponse({"ready": False, "state": "loading"}, status_code=503)
    readiness, info = runtime.readiness, runtime.info
    body = ReadyResponse(
        ready=readiness.ready, state=readiness.state, reason=readiness.reason,
        provider=info.provider, requested_providers=info.requested_providers,
        warmed_batch_sizes=readiness.warmed_batch_sizes, warmup_seconds=readiness.warmup_seconds,
        golden=readiness.golden,
    )
    return JSONResponse(body.model_dump(), status_code=200 if readiness.ready else 503)


@router.get("/model", summary="The served model: keypoints, groups, flip pairs, sizes, provider",
            response_model=ModelResponse)
async def model(request: Request) -> ModelResponse:
    runtime = request.app.state.runtime
    info, config, settings = runtime.info, runtime.config, runtime.settings
    groups = WFLW_GROUPS if config.num_keypoints == 98 else {}
    return ModelResponse(
        name=info.name, path=info.path.name, sha256=info.sha256,
        source_checkpoint_sha256=info.source_checkpoint_sha256, precision=info.precision,
        trained=info.trained, provider=info.provider, requested_providers=info.requested_providers,
        num_keypoints=config.num_keypoints, keypoint_names=list(config.keypoint_names),
        groups=[{"name": n, "start": a, "stop": b} for n, (a, b) in groups.items()],
        flip_pairs=[list(p) for p in config.flip_pairs], input_size=list(config.input_size),
        heatmap_size=list(config.heatmap_size), mean=list(config.mean), std=list(config.std),
        flip_test_default=settings.flip_test, max_batch_size=settings.max_batch_size,
        metadata={k: v for k, v in info.metadata.items() if k != "landmarks.golden"},
        warnings=info.warnings,
    )
