"""Pure NumPy/OpenCV pre- and post-processing of mmpose's WFLW HRNetV2 + DARK pipeline.

See docs/PIPELINE.md for the specification this package follows.
"""

from .config import HeatmapCodec, PipelineConfig, blur_kernel_for_sigma
from .dark import argmax_heatmaps, decode_heatmaps
from .flip import flip_back, flip_inputs, merge_flip
from .geometry import (
    affine_transform_points,
    box_to_center_scale,
    get_affine_transform,
    heatmap_to_image,
    xyxy_to_xywh,
)
from .preprocess import (
    ImageDecodeError,
    ImageTooLargeError,
    crop_faces,
    decode_image,
    normalize,
    read_image_size,
)

__all__ = [
    "HeatmapCodec",
    "ImageDecodeError",
    "ImageTooLargeError",
    "PipelineConfig",
    "affine_transform_points",
    "argmax_heatmaps",
    "blur_kernel_for_sigma",
    "box_to_center_scale",
    "crop_faces",
    "decode_heatmaps",
    "decode_image",
    "flip_back",
    "flip_inputs",
    "get_affine_transform",
    "heatmap_to_image",
    "merge_flip",
    "normalize",
    "read_image_size",
    "xyxy_to_xywh",
]
