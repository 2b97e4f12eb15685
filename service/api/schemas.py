"""Request/response models. They document the API (OpenAPI) and validate JSON requests."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

PointSet = Literal["wflw98", "ibug68", "five"]
FourNumbers = Annotated[list[float], Field(min_length=4, max_length=4)]


class LandmarksOptions(BaseModel):
    """Every option of a landmarks request. Strict: booleans are booleans, numbers numbers."""

    model_config = ConfigDict(extra="forbid", strict=True)

    bboxes: list[FourNumbers] | None = Field(
        None, description="Face boxes in image pixels (after EXIF rotation); omitted = detect faces",
    )
    bbox_format: Literal["xywh", "xyxy"] = "xywh"
    flip_test: bool | None = Field(None, description="Average with a mirrored pass (default: server setting)")
    detect: bool | None = Field(
        None, description="Without bboxes: find faces (default true); false = the whole image is one face",
    )
    points: PointSet = Field("wflw98", description="wflw98 (all), ibug68 (68-point iBUG view), five")


class RenderOptions(LandmarksOptions):
    format: Literal["jpeg", "png"] = "jpeg"


class LandmarksJsonRequest(LandmarksOptions):
    model_config = ConfigDict(
        extra="forbid", strict=True,
        json_schema_extra={"examples": [{
            "image": "<base64 of a JPEG/PNG file>",
            "bboxes": [[412.0, 96.0, 180.0, 210.0]],
            "bbox_format": "xywh",
            "flip_test": True,
        }]},
    )
    image: str = Field(..., description="The image file (JPEG, PNG, BMP, WebP, TIFF), base64-encoded")


class RenderJsonRequest(RenderOptions):
    image: str = Field(..., description="The image file (JPEG, PNG, BMP, WebP, TIFF), base64-encoded")


class Detection(BaseModel):
    score: float = Field(..., description="Detector confidence in [0, 1]")
    keypoints: list[list[float]] = Field(
        ..., description="5 x [x, y]: the detector's eye centres, nose tip, mouth corners",
    )


class Face(BaseModel):
    bbox: list[float] = Field(..., description="The face box used, [x, y, w, h] in image pixels: "
                                                "the client's box or the detector's")
    detection: Detection | None = Field(..., description="The detector's result; null for client boxes")
    landmarks: list[list[float]] = Field(..., description="K x [x, y] in image pixels, in the "
                                                          "requested point set's order")
    scores: list[float | None] = Field(
        ..., description="Per-point confidence: the DARK-decoded heatmap maximum (about 0-1 for a "
                         "trained model; low = occluded or unsure); null when the heatmap held no finite "
                         "value (the point's coordinates are then meaningless)",
    )
    score: float | None = Field(..., description="Mean of the per-point scores (null if any is null)")


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
    """Milliseconds per stage. Stages that did not run (no detector, no face) are absent."""

    decode: float
    detect: float | None = Field(None, description="Present when the detector ran")
    preprocess: float
    queue: float | None = Field(None, description="Absent when there was no face to run")
    inference: float | None = Field(None, description="Absent when there was no face to run")
    postprocess: float | None = Field(None, description="Absent when there was no face to run")
    total: float


class LandmarksResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "image": {"width": 1024, "height": 661},
        "model": {"name": "hrnetv2_w18_wflw_256x256_dark", "sha256": "9c1b...", "provider":
                  "CUDAExecutionProvider", "precision": "fp32", "trained": True},
        "flip_test": True,
        "points": "wflw98",
        "faces": [{"bbox": [412.0, 96.0, 180.0, 210.0], "detection": None,
                   "landmarks": [[440.7, 132.7], "..."], "scores": [0.91, "..."], "score": 0.88}],
        "timings_ms": {"decode": 3.1, "preprocess": 0.9, "queue": 0.4, "inference": 6.2,
                       "postprocess": 0.5, "total": 11.6},
        "warnings": [],
    }]})
    image: ImageSize
    model: ModelIdentity
    flip_test: bool
    points: PointSet
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
    provider: str | None = Field(None, description="The execution provider actually in use")
    requested_providers: list[str] = Field(default_factory=list)
    provider_choice: str | None = Field(None, description="auto (GPU if usable, else CPU) or demanded "
                                                          "(LANDMARKS_PROVIDERS lists them)")
    detector_provider: str | None = Field(None, description="The face detector's provider; null when off")
    workers: int = 1
    workers_ready: int = 0
    warmed_batch_sizes: list[int] = Field(default_factory=list)
    warmup_seconds: float | None = None
    golden: dict | None = None


class PointSetInfo(BaseModel):
    name: str
    indices: list[int] = Field(..., description="WFLW-98 index of each point, in order")
    names: list[str]


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
    point_sets: list[PointSetInfo]
    flip_pairs: list[list[int]]
    input_size: list[int]
    heatmap_size: list[int]
    mean: list[float]
    std: list[float]
    flip_test_default: bool
    max_batch_size: int
    metadata: dict[str, str]
    warnings: list[str]
    detector: dict[str, str] | None = Field(None, description="The face detector; null when off")
