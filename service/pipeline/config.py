"""Everything the pipeline needs to know about a model, with WFLW/mmpose defaults.

Two parts:

- `HeatmapCodec`: how keypoints become heatmaps and back (input and heatmap size, target
  sigma, DARK blur kernel, crop box units and padding). Training encodes its targets with it,
  the crop and the DARK decode read it, and the ONNX file carries it, so encode and decode
  cannot drift apart (mmpose 1.x's codec idea).
- `PipelineConfig`: the codec plus what the network expects around it (normalisation, flip
  pairs, keypoint names, what the graph already does).

The ONNX file written by `model_export` carries both in its `metadata_props` (keys prefixed
`landmarks.`, values JSON-encoded; the codec as one object under `landmarks.codec`). The
service reads them back with `PipelineConfig.from_metadata`; a file without metadata gets the
defaults below, which are those of mmpose's `hrnetv2_w18_wflw_256x256_dark` config.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

from .keypoints import FLIP_PAIRS, KEYPOINT_NAMES, NUM_KEYPOINTS, WFLW_GROUPS

METADATA_PREFIX = "landmarks."
CODEC_KEY = "codec"
# Keys under which files written before the codec existed stored its parts.
_LEGACY_CODEC_KEYS = {
    "input_size": "input_size",
    "heatmap_size": "heatmap_size",
    "pixel_std": "pixel_std",
    "bbox_padding": "padding",
    "modulate_kernel": "blur_kernel",
}


def blur_kernel_for_sigma(sigma: float) -> int:
    """The odd DARK blur kernel that matches a target sigma (mmpose's rule).

    OpenCV (and mmpose's codec docs) relate a Gaussian kernel size k to its sigma by
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8; this returns the odd k >= 3 whose sigma is
    nearest: sigma 2 -> 11, sigma 3 -> 17 (sigma 2.9; 19 would be 3.2), as mmpose's configs use.
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"target sigma must be a positive number, got {sigma}")
    # (sigma - 0.8) / 0.3 is 3.9999999... for sigma 2 in floating point: round, never floor.
    half = round((sigma - 0.8) / 0.3 + 1)
    return max(3, 2 * half + 1)


@dataclass(frozen=True)
class HeatmapCodec:
    """Keypoints <-> heatmaps, shared by training targets, crop and DARK decode.

    Sizes are (width, height). `pixel_std` is the unit of the crop box scale (mmpose: a box
    of scale s spans s * 200 px) and `padding` the factor by which a face box is enlarged
    before cropping. `blur_kernel` (odd) is derived from `sigma` when not given.
    """

    input_size: tuple[int, int] = (256, 256)
    heatmap_size: tuple[int, int] = (64, 64)
    sigma: float = 2.0  # Gaussian target sigma, in heatmap pixels
    blur_kernel: int | None = None  # DARK modulation kernel; None: blur_kernel_for_sigma(sigma)
    pixel_std: float = 200.0
    padding: float = 1.25

    def __post_init__(self) -> None:
        # JSON gives lists; keep the dataclass hashable and comparable.
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "heatmap_size", tuple(int(v) for v in self.heatmap_size))
        object.__setattr__(self, "sigma", float(self.sigma))
        object.__setattr__(self, "pixel_std", float(self.pixel_std))
        object.__setattr__(self, "padding", float(self.padding))
        kernel = blur_kernel_for_sigma(self.sigma) if self.blur_kernel is None else self.blur_kernel
        object.__setattr__(self, "blur_kernel", int(kernel))
        self.validate()

    @property
    def stride(self) -> tuple[float, float]:
        """Input pixels per heatmap pixel, (x, y)."""
        return (self.input_size[0] / self.heatmap_size[0], self.input_size[1] / self.heatmap_size[1])

    def validate(self) -> None:
        if len(self.input_size) != 2 or len(self.heatmap_size) != 2 \
                or min(*self.input_size, *self.heatmap_size) <= 0:
            raise ValueError(f"codec sizes must be two positive integers, got input "
                             f"{self.input_size} and heatmap {self.heatmap_size}")
        if self.blur_kernel < 1 or self.blur_kernel % 2 != 1:
            raise ValueError(f"DARK blur kernel must be odd and positive, got {self.blur_kernel}")
        for name in ("sigma", "pixel_std", "padding"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"codec {name} must be a positive number, got {value}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PipelineConfig:
    num_keypoints: int = NUM_KEYPOINTS
    codec: HeatmapCodec = field(default_factory=HeatmapCodec)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB, on the 0-1 scale
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    color_order: str = "RGB"
    flip_pairs: tuple[tuple[int, int], ...] = FLIP_PAIRS
    shift_heatmap: bool = True  # mmpose shifts the flipped-back heatmap one column right
    flip_test_in_graph: bool = False  # True if the ONNX graph already averages a flipped pass
    keypoint_names: tuple[str, ...] = field(default=KEYPOINT_NAMES)
    # Semantic groups as (name, start, stop) index ranges. None (files exported before this
    # field existed): WFLW's groups for a 98-point model, none otherwise.
    keypoint_groups: tuple[tuple[str, int, int], ...] | None = None

    def __post_init__(self):
        if self.keypoint_groups is None:
            default = tuple((name, start, stop) for name, (start, stop) in WFLW_GROUPS.items()) \
                if self.num_keypoints == NUM_KEYPOINTS else ()
            object.__setattr__(self, "keypoint_groups", default)  # frozen: resolve once

    @property
    def groups(self) -> dict[str, tuple[int, int]]:
        """Group name -> half-open index range [start, stop)."""
        return {name: (int(start), int(stop)) for name, start, stop in self.keypoint_groups}

    # The codec's parts under the names the pipeline has always used.
    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the network input."""
        return self.codec.input_size

    @property
    def heatmap_size(self) -> tuple[int, int]:
        """(width, height) of each output heatmap."""
        return self.codec.heatmap_size

    @property
    def bbox_padding(self) -> float:
        return self.codec.padding

    @property
    def pixel_std(self) -> float:
        return self.codec.pixel_std

    @property
    def modulate_kernel(self) -> int:
        """DARK Gaussian modulation kernel."""
        return self.codec.blur_kernel

    @property
    def sigma(self) -> float:
        return self.codec.sigma

    @property
    def aspect_ratio(self) -> float:
        return self.input_size[0] / self.input_size[1]

    def to_metadata(self) -> dict[str, str]:
        """ONNX metadata_props: every field JSON-encoded, the codec as one object."""
        return {METADATA_PREFIX + f.name: json.dumps(_plain(getattr(self, f.name)))
                for f in fields(self)}

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> PipelineConfig:
        """Build from ONNX metadata_props; keys that are absent keep their WFLW defaults.

        Files written before `landmarks.codec` existed stored input_size, heatmap_size,
        bbox_padding, pixel_std and modulate_kernel as separate keys; those are read instead
        (sigma then stays 2, whose kernel 11 is what such files were decoded with).
        """
        kwargs = {}
        for f in fields(cls):
            raw = props.get(METADATA_PREFIX + f.name)
            if raw is None or f.name == CODEC_KEY:
                continue
            value = json.loads(raw)
            if isinstance(value, list):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            kwargs[f.name] = value
        kwargs[CODEC_KEY] = _codec_from_metadata(props)
        config = cls(**kwargs)
        config.validate()
        return config

    def validate(self) -> None:
        self.codec.validate()
        if len(self.keypoint_names) != self.num_keypoints:
            raise ValueError(
                f"{len(self.keypoint_names)} keypoint names for {self.num_keypoints} keypoints"
            )
        for a, b in self.flip_pairs:
            if not (0 <= a < self.num_keypoints and 0 <= b < self.num_keypoints):
                raise ValueError(f"flip pair ({a}, {b}) is outside 0..{self.num_keypoints - 1}")
        for name, (start, stop) in self.groups.items():
            if not 0 <= start < stop <= self.num_keypoints:
                raise ValueError(f"keypoint group {name!r} [{start}, {stop}) is outside 0..{self.num_keypoints}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three channels with std > 0")


def _plain(value):
    return value.to_dict() if isinstance(value, HeatmapCodec) else value


def _codec_from_metadata(props: dict[str, str]) -> HeatmapCodec:
    raw = props.get(METADATA_PREFIX + CODEC_KEY)
    if raw is not None:
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise ValueError(f"metadata {METADATA_PREFIX}{CODEC_KEY} must be a JSON object")
        known = {f.name for f in fields(HeatmapCodec)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"metadata {METADATA_PREFIX}{CODEC_KEY} has unknown keys {unknown}")
        return HeatmapCodec(**value)
    legacy = {}
    for key, name in _LEGACY_CODEC_KEYS.items():
        raw = props.get(METADATA_PREFIX + key)
        if raw is not None:
            legacy[name] = json.loads(raw)
    return HeatmapCodec(**legacy)
