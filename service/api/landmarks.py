"""POST /landmarks and POST /landmarks/render: image (+ face boxes) -> landmarks per face.

Both routes run the same request flow, `locate_faces`:
decode -> boxes (the client's, or the detector's) -> crops -> batcher queue -> inference ->
DARK decode, each stage timed and observed in the stage latency histogram. CPU-heavy stages
run in worker threads; the event loop only parses and awaits. `/landmarks` turns the result
into JSON, `/landmarks/render` into an image; a new output is a new route on the same flow.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from service.engine.batcher import BatcherStoppedError, QueueFullError
from service.engine.runtime import LandmarkRuntime
from service.pipeline import draw
from service.pipeline import faces as face_pipeline
from service.pipeline.keypoints import NUM_KEYPOINTS, point_set_groups
from service.pipeline.preprocess import ImageDecodeError, ImageTooLargeError, decode_image

from .deps import protected, ready_runtime
from .errors import ApiError
from .request import (
    MULTIPART_FIELDS,
    LandmarksRequest,
    invalid,
    read_landmarks_request,
    validate_boxes,
)
from .schemas import (
    ErrorResponse,
    LandmarksJsonRequest,
    LandmarksResponse,
    RenderJsonRequest,
)

router = APIRouter(dependencies=protected)

_FIELD_DOCS = {
    "image": {"type": "string", "format": "binary", "description": "JPEG/PNG/BMP/WebP/TIFF file"},
    "bboxes": {"type": "string", "description": "JSON list of boxes, e.g. [[412,96,180,210]] (a text "
               "field or a file part); omitted = detect faces", "example": "[[412, 96, 180, 210]]"},
    "bbox_format": {"type": "string", "enum": ["xywh", "xyxy"], "default": "xywh"},
    "flip_test": {"type": "string", "enum": ["true", "false"],
                  "description": "default: the server's LANDMARKS_FLIP_TEST"},
    "detect": {"type": "string", "enum": ["true", "false"], "default": "true",
               "description": "without bboxes: find faces; false = the whole image is one face"},
    "points": {"type": "string", "enum": ["wflw98", "ibug68", "five"], "default": "wflw98"},
    "format": {"type": "string", "enum": ["jpeg", "png"], "default": "jpeg"},
}


def _multipart_schema(render: bool) -> dict:
    names = [n for n in MULTIPART_FIELDS if render or n != "format"]
    return {"type": "object", "required": ["image"], "properties": {n: _FIELD_DOCS[n] for n in names}}


_ERRORS = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Content-Length is not a number",
        401: "missing or wrong API key",
        408: "the request did not arrive within LANDMARKS_READ_TIMEOUT_S",
        413: "body bytes or image pixels over the limit",
        415: "unsupported content type, or an image that cannot be decoded",
        422: "bad boxes or fields (NaN, empty, degenerate, outside the image, too many faces)",
        503: "not ready, shutting down, or queue full (see Retry-After)",
        504: "request timed out",
    }.items()
}


@dataclass
class LocatedFaces:
    """What the request flow found: the decoded image and, per face, box, detection, landmarks."""

    rgb: np.ndarray  # [H, W, 3] uint8, EXIF orientation applied
    boxes: np.ndarray  # [F, 4] x, y, w, h in image pixels
    detections: object | None  # service.pipeline.detect.Detections for detected faces, else None
    landmarks: np.ndarray  # [F, K, 2] image pixels
    scores: np.ndarray  # [F, K]
    flip_test: bool
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    records: list[dict] | None = None  # face_records(...), when asked for


def _decode(runtime: LandmarkRuntime, data: bytes) -> np.ndarray:
    try:
        return decode_image(data, runtime.settings.max_image_pixels)
    except ImageTooLargeError as exc:
        raise ApiError(413, "image_too_large", str(exc)) from None
    except ImageDecodeError as exc:
        raise ApiError(415, "unsupported_image", str(exc)) from None


def _find_boxes(runtime: LandmarkRuntime, rgb: np.ndarray, options, timings: dict, warnings: list):
    """-> (boxes [F, 4] xywh, center [F, 2], scale [F, 2], detections or None)."""
    settings, config = runtime.settings, runtime.config
    height, width = rgb.shape[:2]
    if options.bboxes is not None:
        boxes = validate_boxes(options.bboxes, options.bbox_format, width, height, settings.max_faces)
        return (boxes, *face_pipeline.centers_and_scales(boxes, config), None)
    if options.detect is False or (options.detect is None and runtime.detector is None):
        warnings.append("no bboxes and no face detection: the whole image was treated as one face")
        boxes = np.array([[0.0, 0.0, float(width), float(height)]])
        return (boxes, *face_pipeline.centers_and_scales(boxes, config), None)
    if runtime.detector is None:
        raise invalid("detector_disabled", "detect=true but the server runs with LANDMARKS_DETECTOR=none; "
                                           "send bboxes")
    started = time.perf_counter()
    found = runtime.detector.detect(rgb, settings.detect_max_side, settings.detect_threshold)
    timings["detect"] = time.perf_counter() - started
    if len(found.scores) > settings.max_faces:
        warnings.append(f"{len(found.scores)} faces found; kept the {settings.max_faces} with the "
                        "highest scores (LANDMARKS_MAX_FACES)")
        found = found.take(np.arange(settings.max_faces))  # sorted by score: the best ones
    if len(found.scores) == 0:
        warnings.append("no face found (LANDMARKS_DETECT_THRESHOLD "
                        f"{settings.detect_threshold:g}); send bboxes to choose faces yourself")
    center, scale = runtime.detector_centers_and_scales(found.boxes)
    return found.boxes, center, scale, found


def _prepare(runtime: LandmarkRuntime, data: bytes, options, flip: bool):
    """Worker thread: decode, boxes, crops."""
    timings: dict[str, float] = {}
    warnings: list[str] = []
    t0 = time.perf_counter()
    rgb = _decode(runtime, data)
    timings["decode"] = time.perf_counter() - t0
    boxes, center, scale, detections = _find_boxes(runtime, rgb, options, timings, warnings)
    t1 = time.perf_counter()
    faces = runtime.prepare(rgb, center, scale, flip)
    timings["preprocess"] = time.perf_counter() - t1
    return rgb, boxes, detections, faces, timings, warnings


async def locate_faces(runtime: LandmarkRuntime, request: LandmarksRequest, deadline: float,
                       records_for: str | None = None) -> LocatedFaces:
    """The request flow shared by every landmarks route; `records_for` (a point set) also
    builds the JSON face records in the post-processing worker thread."""
    settings, options = runtime.settings, request.options
    flip = settings.flip_test if options.flip_test is None else options.flip_test
    rgb, boxes, detections, faces, timings, warnings = await runtime.run_cpu(
        _prepare, runtime, request.image, options, flip)
    if faces.num_faces == 0:
        num_k = runtime.config.num_keypoints
        return LocatedFaces(rgb, boxes, detections, np.zeros((0, num_k, 2)), np.zeros((0, num_k)),
                            flip, timings, warnings, [] if records_for else None)
    try:
        heatmaps, timing = await runtime.infer(faces, timeout_s=max(deadline - time.perf_counter(), 0.001))
    except QueueFullError as exc:
        raise ApiError(503, "queue_full", str(exc), {"Retry-After": "1"}) from None
    except BatcherStoppedError as exc:
        raise ApiError(503, "shutting_down", str(exc), {"Retry-After": "1"}) from None
    except asyncio.TimeoutError:
        raise ApiError(504, "timeout", f"request took longer than {settings.request_timeout_s:g} s") from None
    timings["queue"], timings["inference"] = timing.queue_s, timing.inference_s
    started = time.perf_counter()
    landmarks, scores, records = await runtime.run_cpu(
        _postprocess, runtime, heatmaps, faces, boxes, detections, records_for)
    timings["postprocess"] = time.perf_counter() - started
    return LocatedFaces(rgb, boxes, detections, landmarks, scores, flip, timings, warnings, records)


def _postprocess(runtime: LandmarkRuntime, heatmaps, faces, boxes, detections, records_for):
    """Worker thread: DARK decode, and the JSON records when the route answers JSON."""
    landmarks, scores = face_pipeline.finish(heatmaps, faces, runtime.config)
    records = None if records_for is None else face_pipeline.face_records(
        landmarks, scores, boxes, detections, records_for)
    return landmarks, scores, records


def _observe(request: Request, located: LocatedFaces) -> None:
    metrics = request.app.state.metrics
    for stage, seconds in located.timings_s.items():
        metrics.stage_latency.labels(stage).observe(seconds)
    metrics.faces.inc(len(located.boxes))


async def _located(request: Request, runtime: LandmarkRuntime, render: bool) -> tuple[LocatedFaces, object, float]:
    started = time.perf_counter()
    parsed = await read_landmarks_request(request, render=render)
    try:
        face_pipeline.served_point_indices(parsed.options.points, runtime.config.num_keypoints)
    except ValueError as exc:
        raise invalid("invalid_field", str(exc)) from None
    # The processing deadline starts once the body is in (a slow upload is the read
    # timeout's business, not the request timeout's).
    located = await locate_faces(runtime, parsed, time.perf_counter() + runtime.settings.request_timeout_s,
                                 records_for=None if render else parsed.options.points)
    _observe(request, located)
    return located, parsed.options, started


@router.post(
    "/landmarks",
    summary="Face landmarks for each face in an image (client boxes or detected faces)",
    response_model=LandmarksResponse,
    responses=_ERRORS,
    openapi_extra={"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": _multipart_schema(render=False)},
        "application/json": {"schema": LandmarksJsonRequest.model_json_schema()},
    }}},
)
async def landmarks(request: Request, runtime: LandmarkRuntime = Depends(ready_runtime)) -> Response:
    located, options, started = await _located(request, runtime, render=False)
    info = runtime.info
    timings = {stage: round(s * 1000.0, 3) for stage, s in located.timings_s.items()}
    timings["total"] = round((time.perf_counter() - started) * 1000.0, 3)
    height, width = located.rgb.shape[:2]
    body = {
        "image": {"width": width, "height": height},
        "model": {"name": info.name, "sha256": info.sha256, "provider": info.provider,
                  "precision": info.precision, "trained": info.trained},
        "flip_test": located.flip_test,
        "points": options.points,
        "faces": located.records,
        "timings_ms": timings,
        "warnings": [*info.warnings, *located.warnings],
    }
    return Response(orjson.dumps(body), media_type="application/json")


@router.post(
    "/landmarks/render",
    summary="The image with each face's box and landmarks drawn on it",
    response_class=Response,
    responses={**_ERRORS, 200: {"content": {"image/jpeg": {}, "image/png": {}},
                                "description": "The image (EXIF-rotated), boxes and points drawn; "
                                               "X-Render-Scale says if it was scaled down"}},
    openapi_extra={"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": _multipart_schema(render=True)},
        "application/json": {"schema": RenderJsonRequest.model_json_schema()},
    }}},
)
async def render(request: Request, runtime: LandmarkRuntime = Depends(ready_runtime)) -> Response:
    located, options, _ = await _located(request, runtime, render=True)
    config = runtime.config
    index = face_pipeline.served_point_indices(options.points, config.num_keypoints)
    if config.num_keypoints == NUM_KEYPOINTS:
        groups = point_set_groups(options.points)
    else:  # another layout: colour by the groups its metadata declares
        groups = {name: np.arange(start, stop) for name, (start, stop) in config.groups.items()}
    keypoints = ([k for k in located.detections.keypoints] if located.detections is not None
                 else [None] * len(located.boxes))

    def draw_and_encode() -> tuple[bytes, float]:
        image, factor = draw.fit_within(located.rgb, runtime.settings.render_max_side)
        drawn = draw.draw_faces(image, located.boxes, located.landmarks[:, index], groups, keypoints, factor)
        return draw.encode_image(drawn, options.format), factor

    data, factor = await runtime.run_cpu(draw_and_encode)
    headers = {"X-Faces": str(len(located.boxes))}
    if factor != 1.0:
        headers["X-Render-Scale"] = f"{factor:.6g}"
    warnings = [*runtime.info.warnings, *located.warnings]
    if warnings:
        headers["X-Warnings"] = "; ".join(warnings)[:500]
    return Response(data, media_type=draw.MEDIA_TYPES[options.format], headers=headers)
