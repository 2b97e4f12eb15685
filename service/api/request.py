"""Reading a landmarks request: multipart or JSON, one validation rule for both.

Multipart can only carry text, so its fields are first turned into the JSON values they
spell (`bboxes` is JSON text, `flip_test`/`detect` are `true`/`false`), then both bodies go
through the same strict pydantic model: `flip_test: "yes"`, `1`, or boxes of strings are
refused the same way whichever encoding carried them.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

import numpy as np
from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from service.pipeline.geometry import xyxy_to_xywh

from .errors import ApiError
from .schemas import LandmarksJsonRequest, LandmarksOptions, RenderJsonRequest, RenderOptions

# A box may reach this many image sizes beyond the image; beyond that it is nonsense input
# (and float32 crop maths would overflow).
BOX_REACH = 10.0
# Smaller boxes cannot hold a face: the crop would be one source pixel stretched 256 times.
MIN_BOX_SIDE_PX = 1.0
# A boxes *file* (`-F bboxes=@boxes.json`) is read up to this size; 64 faces need ~3 KB.
MAX_BOXES_FILE_BYTES = 1 << 20

MULTIPART_FIELDS = ("image", "bboxes", "bbox_format", "flip_test", "detect", "points", "format")
FLAG_FIELDS = ("flip_test", "detect")


@dataclass
class LandmarksRequest:
    image: bytes
    options: LandmarksOptions


def invalid(code: str, detail: str) -> ApiError:
    return ApiError(422, code, detail)


def _error_code(loc: tuple) -> str:
    if not loc:
        return "invalid_request"
    if loc[0] == "bboxes":
        return "invalid_bboxes"
    if loc[0] in MULTIPART_FIELDS and loc[0] != "image":
        return "invalid_field"
    return "invalid_request"


def _validation_error(exc: ValidationError) -> ApiError:
    errors = exc.errors()
    detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors[:5])
    return invalid(_error_code(tuple(errors[0]["loc"])), detail)


def _flag_value(text: str):
    # Exactly the documented spelling; anything else is left for the model to refuse.
    return {"true": True, "false": False}.get(text, text)


async def _field_text(value, name: str) -> str:
    if isinstance(value, UploadFile):  # `-F bboxes=@boxes.json` sends a file part
        data = await value.read(MAX_BOXES_FILE_BYTES + 1)
        if len(data) > MAX_BOXES_FILE_BYTES:
            raise invalid("invalid_field", f"{name} file is over {MAX_BOXES_FILE_BYTES} bytes")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise invalid("invalid_field", f"{name} file is not UTF-8 text") from None
    return value


async def _read_multipart(request: Request, model: type[LandmarksOptions]) -> LandmarksRequest:
    try:
        # Two files: the image and, optionally, a boxes file. The context closes the parts
        # that spilled to temporary files.
        async with request.form(max_files=2, max_fields=len(MULTIPART_FIELDS)) as form:
            return await _options_from_form(form, model)
    except ApiError:
        raise
    except Exception as exc:  # malformed multipart bodies raise parser-specific errors
        raise ApiError(422, "invalid_multipart", f"cannot parse multipart body: {str(exc)[:120]}") from None


async def _options_from_form(form, model: type[LandmarksOptions]) -> LandmarksRequest:
    image = form.get("image")
    if not isinstance(image, UploadFile):
        raise invalid("missing_image", "multipart field 'image' (a file) is required")
    unknown = sorted(set(form.keys()) - set(MULTIPART_FIELDS))
    if unknown:
        raise invalid("invalid_field", f"unknown field {unknown[0]!r}; fields are {', '.join(MULTIPART_FIELDS)}")
    repeated = [key for key in MULTIPART_FIELDS if len(form.getlist(key)) > 1]
    if repeated:
        raise invalid("invalid_field", f"field {repeated[0]!r} is given more than once")
    values: dict = {}
    for name in MULTIPART_FIELDS[1:]:
        if name not in form:
            continue
        text = await _field_text(form[name], name)
        if name == "bboxes":
            try:
                values[name] = json.loads(text)
            except (ValueError, RecursionError):
                # ValueError covers malformed JSON and integers over Python's digit limit.
                raise invalid("invalid_bboxes", "bboxes is not valid JSON, e.g. [[412, 96, 180, 210]]") from None
        elif name in FLAG_FIELDS:
            values[name] = _flag_value(text)
        else:
            values[name] = text
    try:
        options = model.model_validate(values)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    return LandmarksRequest(await image.read(), options)


async def _read_json(request: Request, model) -> LandmarksRequest:
    try:
        body = model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise _validation_error(exc) from None
    try:
        data = base64.b64decode(body.image, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("invalid_image_encoding", "image is not valid base64") from None
    return LandmarksRequest(data, body)  # the JSON models extend the options models


async def read_landmarks_request(request: Request, render: bool = False) -> LandmarksRequest:
    """The image bytes and validated options from a multipart or JSON body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _read_multipart(request, RenderOptions if render else LandmarksOptions)
    if content_type == "application/json":
        return await _read_json(request, RenderJsonRequest if render else LandmarksJsonRequest)
    raise ApiError(415, "unsupported_media_type",
                   "send multipart/form-data (field 'image') or application/json (base64 'image')")


def validate_boxes(raw: list[list[float]], bbox_format: str, width: int, height: int,
                   max_faces: int) -> np.ndarray:
    """Client boxes -> `[F, 4]` (x, y, w, h) float64 in image pixels, or a 422."""
    if not raw:
        raise invalid("invalid_bboxes", "bboxes is empty; omit it to detect faces")
    if len(raw) > max_faces:
        raise invalid("too_many_faces", f"{len(raw)} boxes; the limit is {max_faces} per request")
    boxes = np.asarray(raw, np.float64)
    if not np.isfinite(boxes).all():
        raise invalid("invalid_bboxes", f"box {_first(~np.isfinite(boxes).all(1))} has a NaN or infinite value")
    if bbox_format == "xyxy":
        boxes = xyxy_to_xywh(boxes)
    x, y, w, h = boxes.T
    small = (w < MIN_BOX_SIDE_PX) | (h < MIN_BOX_SIDE_PX)
    if small.any():
        raise invalid("invalid_bboxes", f"box {_first(small)} is smaller than {MIN_BOX_SIDE_PX:g} px "
                                        "(zero, negative or sub-pixel width or height)")
    outside = (x >= width) | (y >= height) | (x + w <= 0) | (y + h <= 0)
    if outside.any():
        raise invalid("invalid_bboxes", f"box {_first(outside)} does not overlap the {width}x{height} image")
    reach = BOX_REACH * max(width, height)
    huge = (w > reach) | (h > reach) | (np.abs(x) > reach) | (np.abs(y) > reach)
    if huge.any():
        raise invalid("invalid_bboxes", f"box {_first(huge)} is more than {BOX_REACH:g}x the image size")
    return boxes


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])
