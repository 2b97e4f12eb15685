"""Liveness, readiness and model description. None of them touch the
batcher queue, so they answer even when inference is saturated."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from service.engine.runtime import LandmarkRuntime
from service.pipeline.keypoints import POINT_SETS, point_set_indices

from .deps import loaded_runtime, protected
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
    readiness, info, settings = runtime.readiness, runtime.info, runtime.settings
    ready, state, reason = readiness.ready, readiness.state, readiness.reason
    # With several workers, this answer comes from whichever worker took the connection:
    # ready means every worker is (Prometheus' shared files count the ready ones).
    workers_ready = request.app.state.metrics.ready_workers()
    if ready and workers_ready is not None and workers_ready < settings.workers:
        ready, state = False, "warming"
        reason = f"{workers_ready} of {settings.workers} workers ready"
    body = ReadyResponse(
        ready=ready, state=state, reason=reason,
        provider=info.provider, requested_providers=info.requested_providers,
        provider_choice="auto" if settings.providers_auto else "demanded",
        detector_provider=runtime.detector.provider if runtime.detector else None,
        workers=settings.workers, workers_ready=workers_ready if workers_ready is not None else int(ready),
        warmed_batch_sizes=readiness.warmed_batch_sizes, warmup_seconds=readiness.warmup_seconds,
        golden=readiness.golden,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/model", summary="The served model: keypoints, groups, point sets, flip pairs, sizes, provider",
            response_model=ModelResponse, dependencies=protected)
async def model(runtime: LandmarkRuntime = Depends(loaded_runtime)) -> ModelResponse:
    info, config, settings = runtime.info, runtime.config, runtime.settings
    # Groups come from the model's metadata; the point sets are views of the WFLW-98 schema.
    wflw = config.num_keypoints == 98
    groups = config.groups
    names = config.keypoint_names
    point_sets = [
        {"name": name, "indices": point_set_indices(name).tolist(),
         "names": [names[i] for i in point_set_indices(name)]}
        for name in POINT_SETS
    ] if wflw else []
    return ModelResponse(
        name=info.name, path=info.path.name, sha256=info.sha256,
        source_checkpoint_sha256=info.source_checkpoint_sha256, precision=info.precision,
        trained=info.trained, provider=info.provider, requested_providers=info.requested_providers,
        num_keypoints=config.num_keypoints, keypoint_names=list(config.keypoint_names),
        groups=[{"name": n, "start": a, "stop": b} for n, (a, b) in groups.items()],
        point_sets=point_sets,
        flip_pairs=[list(p) for p in config.flip_pairs], input_size=list(config.input_size),
        heatmap_size=list(config.heatmap_size), mean=list(config.mean), std=list(config.std),
        flip_test_default=settings.flip_test, max_batch_size=settings.max_batch_size,
        metadata={k: v for k, v in info.metadata.items() if k != "landmarks.golden"},
        warnings=info.warnings,
        detector=None if runtime.detector is None else {
            "name": "retinaface_mnet025", "path": runtime.detector.path.name,
            "sha256": runtime.detector.sha256, "provider": runtime.detector.provider},
    )
