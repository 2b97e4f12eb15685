"""Everything the pipeline needs to know about a model, with WFLW/mmpose defaults.

The ONNX file written by `model_export` carries these values in its `metadata_props`
(keys prefixed `landmarks.`, values JSON-encoded). The service reads them back with
`PipelineConfig.from_metadata`; a file without metadata gets the documented defaults below,
which are those of mmpose's `hrnetv2_w18_wflw_256x256_dark` config.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from .keypoints import FLIP_PAIRS, KEYPOINT_NAMES, NUM_KEYPOINTS

METADATA_PREFIX = "landmarks."


@dataclass(frozen=True)
class PipelineConfig:
    num_keypoints: int = NUM_KEYPOINTS
    input_size: tuple[int, int] = (256, 256)  # (width, height) of the network input
    heatmap_size: tuple[int, int] = (64, 64)  # (width, height) of each output heatmap
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB, on the 0-1 scale
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    color_order: str = "RGB"
    bbox_padding: float = 1.25
    pixel_std: float = 200.0
    flip_pairs: tuple[tuple[int, int], ...] = FLIP_PAIRS
    shift_heatmap: bool = True  # mmpose shifts the flipped-back heatmap one column right
    flip_test_in_graph: bool = False  # True if the ONNX graph already averages a flipped pass
    modulate_kernel: int = 11  # DARK Gaussian modulation kernel
    keypoint_names: tuple[str, ...] = field(default=KEYPOINT_NAMES)

    @property
    def aspect_ratio(self) -> float:
        return self.input_size[0] / self.input_size[1]

    def to_metadata(self) -> dict[str, str]:
        return {METADATA_PREFIX + k: json.dumps(v) for k, v in asdict(self).items()}

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> "PipelineConfig":
        """Build from ONNX metadata_props; keys that are absent keep their WFLW defaults."""
        kwargs = {}
        for f in fields(cls):
            raw = props.get(METADATA_PREFIX + f.name)
            if raw is None:
                continue
            value = json.loads(raw)
            if isinstance(value, list):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            kwargs[f.name] = value
        config = cls(**kwargs)
        config.validate()
        return config

    def validate(self) -> None:
        if len(self.keypoint_names) != self.num_keypoints:
            raise ValueError(
                f"{len(self.keypoint_names)} keypoint names for {self.num_keypoints} keypoints"
            )
        for a, b in self.flip_pairs:
            if not (0 <= a < self.num_keypoints and 0 <= b < self.num_keypoints):
                raise ValueError(f"flip pair ({a}, {b}) is outside 0..{self.num_keypoints - 1}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three channels with std > 0")
