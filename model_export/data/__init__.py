"""WFLW data for training and evaluation: readers for both published forms, mmpose's training
augmentation and DARK targets, and a torch Dataset. torch is only imported by `dataset`."""

from .targets import unbiased_gaussian_targets
from .transforms import (
    AugmentConfig,
    draw_augmentation,
    fliplr_joints,
    padded_center_scale,
    train_sample,
)
from .wflw import (
    ATTRIBUTES,
    SUBSET_ORDER,
    FaceRecord,
    WFLWError,
    WFLWSource,
    center_scale_from_landmarks,
    find_split,
    load_rgb,
    read_json,
    read_json_subsets,
    read_split,
    read_txt,
    subset,
    subsets_by_flags,
)

__all__ = [
    "ATTRIBUTES",
    "SUBSET_ORDER",
    "AugmentConfig",
    "FaceRecord",
    "WFLWError",
    "WFLWSource",
    "center_scale_from_landmarks",
    "draw_augmentation",
    "find_split",
    "fliplr_joints",
    "load_rgb",
    "padded_center_scale",
    "read_json",
    "read_json_subsets",
    "read_split",
    "read_txt",
    "subset",
    "subsets_by_flags",
    "train_sample",
    "unbiased_gaussian_targets",
]
