"""Request/response models. They document the API (OpenAPI) and validate JSON requests."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Box = list[float]


class LandmarksJsonRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{
            "image": "<base64 of a JPEG/PNG file>",
            "bboxes": [[412.0, 96.0, 180.0, 210.0]],
            "bbox_format": "xywh",
            "flip_test": True,
        }]},
    )
    image: str = Field(..., description="The image file (JPEG, PNG, BMP, WebP, TIFF), base64-encoded")
    bboxes: list[Box] | None = Field(
        None, description="Face boxes in image pixels; omitted = the whole image is one face",
    )
    bbox_format: Literal["xywh", "xyxy"] = "xywh"
    flip_test: bool | None = Field(None, description="Average with a mirrored pass (default: server setting)")


class Face(BaseModel):
    bbox: list[float] = Field(..., description="The face box used, [x, y, w, h] in image pixels")
    landmarks: list[list[float]] = Field(..., description="K x [x, y] in image pixels (K = 98 for WFLW)")
    scores: list[float] = Field(..., description="Per-point heatmap maxima")
    score: float = Field(..., description="Mean of the per-point scores")


class ImageSize(BaseModel):
    width: int
    height: int


class ModelIdentity(BaseModel):
    name: str
    sha256: str
    provider: str
    precision: str
    trained: bool | None


class Timings(BaseModel):
    decode: float
    preprocess: float
    queue: float
    inference: float
    postprocess: float
    total: float


class LandmarksResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "image": {"width": 1024, "height": 661},
        "model": {"name": "hrnetv2_w18_wflw_256x256_dark", "sha256": "9c1b...", "provider":
                  "CUDAExecutionProvider", "precision": "fp32", "trained": True},
        "flip_test": True,
        "faces": [{"bbox": [412.0, 96.0, 180.0, 210.0], "landmarks": [[440.7, 132.7], "..."],
                   "scores": [0.91, "..."], "score": 0.88}],
        "timings_ms": {"decode": 3.1, "preprocess": 0.9, "queue": 0.4, "inference": 6.2,
                       "postprocess": 0.5, "total": 11.6},
        "warnings": [],
    }]})
    image: ImageSize
    model: ModelIdentity
    flip_test: bool
    faces: list[Face]
    timings_ms: Timings
    warnings: list[str] = Field(default_factory=list, description="e.g. an untrained model")


class ErrorResponse(BaseModel):
    code: str = Field(..., description="Stable machine-readable error code")
    detail: str
    request_id: str | None = None


class ReadyResponse(BaseModel):
    ready: bool
    state: str
    reason: str = ""
    provider: str | None = None
    requested_providers: list[str] = Field(default_factory=list)
    warmed_batch_sizes: list[int] = Field(default_factory=list)
    warmup_seconds: float | None = None
    golden: dict | None = None


class KeypointGroup(BaseModel):
    name: str
    start: int
    stop: int


class ModelResponse(BaseModel):
    name: str
    path: str
    sha256: str
    source_checkpoint_sha256: str
    precision: str
    trained: bool | None
    provider: str
    requested_providers: list[str]
    num_keypoints: int
    keypoint_names: list[str]
    groups: list[KeypointGroup]
    flip_pairs: list[list[int]]
    input_size: list[int]
    heatmap_size: list[int]
    mean: list[float]
    std: list[float]
    flip_test_default: bool
    max_batch_size: int
    metadata: dict[str, str]
    warnings: list[str]
