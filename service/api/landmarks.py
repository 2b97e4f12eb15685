"""POST /landmarks: image + face boxes -> 98 landmarks per face.

Stages (each timed, each a histogram): decode -> preprocess -> queue -> inference ->
postprocess. CPU-heavy stages run in worker threads; the event loop only parses and awaits.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import time

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from service.engine.batcher import BatcherStoppedError, QueueFullError
from service.pipeline import faces as face_pipeline
from service.pipeline.geometry import xyxy_to_xywh
from service.pipeline.preprocess import ImageDecodeError, ImageTooLargeError, decode_image

from .errors import ApiError
from .schemas import ErrorResponse, LandmarksJsonRequest, LandmarksResponse

router = APIRouter()

# A box may reach this many image sizes beyond the image; beyond that it is nonsense input
# (and float32 crop maths would overflow).
BOX_REACH = 10.0

_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["image"],
    "properties": {
        "image": {"type": "string", "format": "binary", "description": "JPEG/PNG/BMP/WebP/TIFF file"},
        "bboxes": {"type": "string", "description": "JSON list of boxes, e.g. [[412,96,180,210]]",
                   "example": "[[412, 96, 180, 210]]"},
        "bbox_format": {"type": "string", "enum": ["xywh", "xyxy"], "default": "xywh"},
        "flip_test": {"type": "string", "enum": ["true", "false"],
                      "description": "default: the server's LANDMARKS_FLIP_TEST"},
    },
}

_ERRORS = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        401: "missing or wrong API key",
        413: "body bytes or image pixels over the limit",
        415: "unsupported content type, or an image that cannot be decoded",
        422: "bad boxes or fields (NaN, empty, degenerate, outside the image, too many faces)",
        503: "not ready, or queue full (see Retry-After)",
        504: "request timed out",
    }.items()
}


def _error_422(code: str, detail: str) -> ApiError:
    return ApiError(422, code, detail)


def parse_flag(value, name: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    # Exactly the documented enum: a lenient parser would accept what the schema forbids.
    if value == "true":
        return True
    if value == "false":
        return False
    raise _error_422("invalid_field", f"{name} must be true or false, got {str(value)[:40]!r}")


def parse_boxes(raw, bbox_format: str, width: int, height: int, max_faces: int) -> np.ndarray:
    """Validated boxes `[F, 4]` (x, y, w, h) float64; the whole image when `raw` is None."""
    if raw is None:
        return np.array([[0.0, 0.0, float(width), float(height)]])
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            raise _error_422("invalid_bboxes", "bboxes is not valid JSON") from None
    if not isinstance(raw, list) or not all(isinstance(b, list) for b in raw):
        raise _error_422("invalid_bboxes", "bboxes must be a JSON list of [x, y, w, h] lists")
    if not raw:
        raise _error_422("invalid_bboxes", "bboxes is empty; omit it to use the whole image")
    if len(raw) > max_faces:
        raise _error_422("too_many_faces", f"{len(raw)} boxes; the limit is {max_faces} per request")
    for i, box in enumerate(raw):
        if len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
            raise _error_422("invalid_bboxes", f"box {i} must be 4 numbers, got {str(box)[:80]}")
    boxes = np.asarray(raw, np.float64)
    if not np.isfinite(boxes).all():
        raise _error_422("invalid_bboxes", f"box {_first(~np.isfinite(boxes).all(1))} has a NaN or infinite value")
    if bbox_format == "xyxy":
        boxes = xyxy_to_xywh(boxes)
    x, y, w, h = boxes.T
    if ((w <= 0) | (h <= 0)).any():
        raise _error_422("invalid_bboxes", f"box {_first((w <= 0) | (h <= 0))} has zero or negative size")
    outside = (x >= width) | (y >= height) | (x + w <= 0) | (y + h <= 0)
    if outside.any():
        raise _error_422("invalid_bboxes", f"box {_first(outside)} does not overlap the "
                                           f"{width}x{height} image")
    reach = BOX_REACH * max(width, height)
    huge = (w > reach) | (h > reach) | (np.abs(x) > reach) | (np.abs(y) > reach)
    if huge.any():
        raise _error_422("invalid_bboxes", f"box {_first(huge)} is more than {BOX_REACH:g}x the image size")
    return boxes


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


async def read_request(request: Request) -> tuple[bytes, object, str, bool | None]:
    """-> (image bytes, raw boxes, bbox_format, flip_test) from multipart or JSON."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=10)
        except Exception as exc:  # malformed multipart bodies raise parser-specific errors
            raise ApiError(422, "invalid_multipart", f"cannot parse multipart body: {str(exc)[:120]}") from None
        repeated = [key for key in ("image", "bboxes", "bbox_format", "flip_test") if len(form.getlist(key)) > 1]
        if repeated:
            raise _error_422("invalid_field", f"field {repeated[0]!r} is given more than once")
        image = form.get("image")
        if not isinstance(image, UploadFile):
            raise _error_422("missing_image", "multipart field 'image' (a file) is required")
        data = await image.read()
        fmt = form.get("bbox_format", "xywh")
        if not isinstance(fmt, str):
            raise _error_422("invalid_field", "bbox_format must be a text field")
        return data, form.get("bboxes"), fmt, parse_flag(form.get("flip_test"), "flip_test")
    if content_type == "application/json":
        try:
            body = LandmarksJsonRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            errors = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                               for e in exc.errors()[:5])
            raise _error_422("invalid_request", errors) from None
        try:
            data = base64.b64decode(body.image, validate=True)
        except (binascii.Error, ValueError):
            raise _error_422("invalid_image_encoding", "image is not valid base64") from None
        return data, body.bboxes, body.bbox_format, body.flip_test
    raise ApiError(415, "unsupported_media_type",
                   "send multipart/form-data (field 'image') or application/json (base64 'image')")


def _prepare(runtime, data: bytes, raw_boxes, bbox_format: str, flip_test: bool):
    """Worker thread: decode, validate boxes, crop + normalise. Returns faces and timings."""
    settings = runtime.settings
    t0 = time.perf_counter()
    try:
        rgb = decode_image(data, settings.max_image_pixels)
    except ImageTooLargeError as exc:
        raise ApiError(413, "image_too_large", str(exc)) from None
    except ImageDecodeError as exc:
        raise ApiError(415, "unsupported_image", str(exc)) from None
    t1 = time.perf_counter()
    height, width = rgb.shape[:2]
    boxes = parse_boxes(raw_boxes, bbox_format, width, height, settings.max_faces)
    config = runtime.config
    center, scale = face_pipeline.centers_and_scales(boxes, config)
    faces = face_pipeline.prepare(rgb, center, scale, config, flip_test)
    t2 = time.perf_counter()
    return (width, height), boxes, faces, t1 - t0, t2 - t1


def _finish(runtime, heatmaps, faces, boxes):
    landmarks, scores = face_pipeline.finish(heatmaps, faces, runtime.config)
    out = []
    for box, points, point_scores in zip(boxes, landmarks, scores):
        out.append({
            "bbox": [float(v) for v in box],
            "landmarks": points.tolist(),
            "scores": [v if math.isfinite(v) else None for v in point_scores.tolist()],
            "score": _finite_or_none(float(np.mean(point_scores))),
        })
    return out


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


@router.post(
    "/landmarks",
    summary="98 face landmarks for each face box in an image",
    response_model=LandmarksResponse,
    responses=_ERRORS,
    openapi_extra={"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
        "application/json": {"schema": LandmarksJsonRequest.model_json_schema()},
    }}},
)
async def landmarks(request: Request) -> Response:
    runtime = request.app.state.runtime
    settings = runtime.settings
    metrics = request.app.state.metrics
    started = time.perf_counter()
    deadline = started + settings.request_timeout_s
    if not runtime.readiness.ready:
        raise ApiError(503, "not_ready", f"model not ready ({runtime.readiness.state}"
                       f"{': ' + runtime.readiness.reason if runtime.readiness.reason else ''})",
                       {"Retry-After": "5"})
    data, raw_boxes, bbox_format, flip_test = await read_request(request)
    if bbox_format not in ("xywh", "xyxy"):
        raise _error_422("invalid_field", "bbox_format must be 'xywh' or 'xyxy'")
    flip = settings.flip_test if flip_test is None else flip_test
    loop = asyncio.get_running_loop()
    size, boxes, faces, decode_s, prep_s = await loop.run_in_executor(
        None, _prepare, runtime, data, raw_boxes, bbox_format, flip)
    remaining = deadline - time.perf_counter()
    try:
        heatmaps, timing = await runtime.batcher.submit(faces.rows, timeout_s=max(remaining, 0.001))
    except QueueFullError as exc:
        raise ApiError(503, "queue_full", str(exc), {"Retry-After": "1"}) from None
    except BatcherStoppedError as exc:
        raise ApiError(503, "shutting_down", str(exc), {"Retry-After": "1"}) from None
    except asyncio.TimeoutError:
        raise ApiError(504, "timeout", f"request took longer than {settings.request_timeout_s:g} s") from None
    t_post = time.perf_counter()
    face_list = await loop.run_in_executor(None, _finish, runtime, heatmaps, faces, boxes)
    post_s = time.perf_counter() - t_post
    info = runtime.info
    for stage, seconds in (("decode", decode_s), ("preprocess", prep_s), ("queue", timing.queue_s),
                           ("inference", timing.inference_s), ("postprocess", post_s)):
        metrics.stage_latency.labels(stage).observe(seconds)
    metrics.faces.inc(faces.num_faces)
    ms = lambda s: round(s * 1000.0, 3)  # noqa: E731
    body = {
        "image": {"width": size[0], "height": size[1]},
        "model": {"name": info.name, "sha256": info.sha256, "provider": info.provider,
                  "precision": info.precision, "trained": info.trained},
        "flip_test": faces.flip_test,
        "faces": face_list,
        "timings_ms": {"decode": ms(decode_s), "preprocess": ms(prep_s), "queue": ms(timing.queue_s),
                       "inference": ms(timing.inference_s), "postprocess": ms(post_s),
                       "total": ms(time.perf_counter() - started)},
        "warnings": list(info.warnings),
    }
    return Response(json.dumps(body), media_type="application/json")
