"""Training augmentation of mmpose's `hrnetv2_w18_wflw_256x256_dark` (docs/PIPELINE.md section 5).

    centre/scale (scale * 1.25) -> random flip -> random scale and rotation -> affine crop
    -> normalise -> unbiased Gaussian targets

Every step the service also performs comes from `service.pipeline`: the affine matrix
(`geometry.get_affine_transform`), point mapping (`geometry.affine_transform_points`), the
normalisation (`preprocess.normalize`), the flip permutation (`keypoints.flip_index`) and the
pipeline constants (`config.PipelineConfig`, whose `HeatmapCodec` gives the box padding and the
target sigma). The crop itself is the same `cv2.warpAffine`
call as `preprocess.crop_faces`, which only lacks the rotation that training needs.

Randomness comes from a `numpy.random.Generator` passed in (never the global state). Draws
per sample, in mmpose's order: U[0,1) for the flip, N(0,1) for the scale, N(0,1) for the
rotation, U[0,1) for whether to rotate.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from service.pipeline.config import PipelineConfig
from service.pipeline.geometry import affine_transform_points, get_affine_transform
from service.pipeline.keypoints import flip_index
from service.pipeline.preprocess import normalize

from .targets import unbiased_gaussian_targets


@dataclass(frozen=True)
class AugmentConfig:
    """mmpose's training augmentation settings (CFG 95-116, TDT 93-262 defaults)."""

    flip_prob: float = 0.5
    rot_factor: float = 30.0  # rotation = clip(rot_factor * N(0,1), -2 rot_factor, 2 rot_factor)
    scale_factor: float = 0.25  # scale *= clip(1 + scale_factor * N(0,1), 1 -/+ scale_factor)
    rot_prob: float = 0.6


def padded_center_scale(center, scale: float, config: PipelineConfig) -> tuple[np.ndarray, np.ndarray]:
    """An annotation's centre and scalar scale -> centre (2,) float32, scale [s, s] * padding
    float32, the codec's padding being mmpose's 1.25 (`TopDownGetBboxCenterScale` when centre
    and scale are present; sections 5.2 and 6)."""
    center = np.asarray(center, dtype=np.float32).reshape(2).copy()
    scale_arr = np.array([scale, scale], dtype=np.float32) * np.float32(config.bbox_padding)
    return center, scale_arr


def fliplr_joints(joints: np.ndarray, visible: np.ndarray, img_width: int, flip_pairs
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Mirror joints (K, 2) and visibility (K,) of an image `img_width` pixels wide (PT 13-51):
    swap every flip pair, x -> img_width - 1 - x, then zero the coordinates of invisible joints."""
    index = flip_index(flip_pairs, len(joints))
    joints = np.asarray(joints, dtype=np.float32)[index].copy()
    visible = np.asarray(visible, dtype=np.float32)[index].copy()
    joints[:, 0] = np.float32(img_width - 1) - joints[:, 0]
    joints *= visible[:, None]
    return joints, visible


@dataclass
class Augmentation:
    """The random draws of one sample (for logging and tests)."""

    flipped: bool
    scale_factor: float
    rotation: float


def draw_augmentation(rng: np.random.Generator, aug: AugmentConfig) -> Augmentation:
    """Four draws in mmpose's order: flip U[0,1) <= p, scale N(0,1), rotation N(0,1), U[0,1)."""
    flipped = bool(rng.random() <= aug.flip_prob)
    sf, rf = aug.scale_factor, aug.rot_factor
    s_factor = float(np.clip(rng.standard_normal() * sf + 1, 1 - sf, 1 + sf))
    r_factor = float(np.clip(rng.standard_normal() * rf, -rf * 2, rf * 2))
    rotation = r_factor if rng.random() <= aug.rot_prob else 0.0
    return Augmentation(flipped, s_factor, rotation)


def crop_matrix(center, scale, rotation: float, config: PipelineConfig) -> np.ndarray:
    """The (2, 3) affine matrix of a training crop: box centre (2,), scale (2,) in units of the
    codec's pixel_std, rotation in degrees, onto the codec's input size."""
    return get_affine_transform(center, scale, rotation, config.input_size, pixel_std=config.pixel_std)


def warp(rgb: np.ndarray, matrix: np.ndarray, input_size) -> np.ndarray:
    """The crop of `preprocess.crop_faces`: bilinear warpAffine, constant zero border."""
    width, height = input_size
    return cv2.warpAffine(np.ascontiguousarray(rgb), matrix, (int(width), int(height)),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def train_sample(rgb: np.ndarray, keypoints: np.ndarray, visible: np.ndarray, center,
                 scale: float, rng: np.random.Generator | None, config: PipelineConfig,
                 aug: AugmentConfig = AugmentConfig(), augmentation: Augmentation | None = None
                 ) -> dict:
    """One training sample: image RGB uint8 (H, W, 3) + annotation -> network input and targets.

    keypoints (K, 2) image pixels, visible (K,), center (2,), scale (scalar, before padding).
    The draws come from `rng`, or are given as `augmentation` (then `rng` may be None).
    Returns {"img": (3, h, w) float32, "target": (K, h/4, w/4) float32, "target_weight": (K, 1)
    float32, "joints": (K, 2) float32 crop pixels, "center", "scale", "rotation", "flipped"}.
    """
    joints = np.asarray(keypoints, dtype=np.float32).copy()
    vis = np.minimum(1, np.asarray(visible, dtype=np.float32))
    c, s = padded_center_scale(center, scale, config)
    if augmentation is None:
        augmentation = draw_augmentation(rng, aug)

    if augmentation.flipped:
        rgb = rgb[:, ::-1]
        joints, vis = fliplr_joints(joints, vis, rgb.shape[1], config.flip_pairs)
        c[0] = np.float32(rgb.shape[1] - 1) - c[0]
    s = s * np.float32(augmentation.scale_factor)
    r = augmentation.rotation

    matrix = crop_matrix(c, s, r, config)
    crop = warp(rgb, matrix, config.input_size)
    shown = vis > 0
    joints[shown] = affine_transform_points(joints[shown], matrix).astype(np.float32)

    img = normalize(crop[None], config.mean, config.std)[0]
    target, weight = unbiased_gaussian_targets(joints, vis, config.codec)
    return {
        "img": img,
        "target": target,
        "target_weight": weight,
        "joints": joints,
        "center": c,
        "scale": s,
        "rotation": np.float32(r),
        "flipped": augmentation.flipped,
    }
