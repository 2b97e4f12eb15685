"""Training targets: mmpose's unbiased (DARK) Gaussian heatmaps (docs/PIPELINE.md section 5.7).

`TopDownGenerateTarget(sigma=2, unbiased_encoding=True)` of mmpose 0.x, as a pure numpy
function. Sizes and sigma come from the model's `HeatmapCodec`, the same object the DARK decode
reads its blur kernel from. Precision follows mmpose under numpy 1.x (the version it ran on): the joint
coordinates are float32 (they come out of the affine step stored in a float32 array), the
heatmap centre mu = joint / stride is computed in float64 and then meets the float32 grid
as a float32 value, so the whole Gaussian is evaluated in float32. (Under numpy 2 mmpose's
own code would evaluate the subtraction in float64; the difference is in the last bits.)
"""

from __future__ import annotations

import numpy as np

from service.pipeline.config import HeatmapCodec

WFLW_CODEC = HeatmapCodec()  # mmpose's: 256x256 input, 64x64 heatmaps, sigma 2


def unbiased_gaussian_targets(
    joints: np.ndarray,
    visible: np.ndarray,
    codec: HeatmapCodec = WFLW_CODEC,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian heatmaps centred on the exact (sub-pixel) joint positions.

    joints: (K, 2) joint (x, y) in input-crop pixels; visible: (K,) visibility (0 or 1).
    codec: input_size and heatmap_size (width, height) and the Gaussian sigma (heatmap px).
    Returns target (K, H, W) float32 and target_weight (K, 1) float32.

    For joint k the weight starts as visible[k]. With stride = image_size / heatmap_size and
    mu = joint / stride (no rounding, no half-pixel shift), the weight becomes 0 when the 3-sigma
    window [mu - 3 sigma, mu + 3 sigma + 1] misses the map: mu_x - 3s >= W, mu_y - 3s >= H,
    mu_x + 3s + 1 < 0 or mu_y + 3s + 1 < 0. For weight > 0.5 the target is
    exp(-((i - mu_x)^2 + (j - mu_y)^2) / (2 sigma^2)) over the whole grid (column i, row j),
    untruncated; other joints get an all-zero map.
    """
    joints = np.asarray(joints, dtype=np.float32).reshape(-1, 2)
    visible = np.asarray(visible, dtype=np.float32).reshape(-1)
    if len(visible) != len(joints):
        raise ValueError(f"{len(joints)} joints but {len(visible)} visibility values")
    num_joints = len(joints)
    width, height = codec.heatmap_size
    sigma = codec.sigma
    stride = (np.asarray(codec.input_size, dtype=np.float64)
              / np.asarray(codec.heatmap_size, dtype=np.float64))
    tmp_size = sigma * 3

    target = np.zeros((num_joints, height, width), dtype=np.float32)
    weight = visible.astype(np.float32).reshape(num_joints, 1).copy()
    mu = joints.astype(np.float64) / stride  # (K, 2), float64 as the numpy-1 scalars were
    outside = ((mu[:, 0] - tmp_size >= width) | (mu[:, 1] - tmp_size >= height)
               | (mu[:, 0] + tmp_size + 1 < 0) | (mu[:, 1] + tmp_size + 1 < 0))
    weight[outside, 0] = 0

    x = np.arange(0, width, 1, dtype=np.float32)
    y = np.arange(0, height, 1, dtype=np.float32)[:, None]
    two_sigma_sq = np.float32(2 * sigma**2)
    for k in np.flatnonzero(weight[:, 0] > 0.5):
        mu_x, mu_y = np.float32(mu[k, 0]), np.float32(mu[k, 1])
        target[k] = np.exp(-((x - mu_x) ** 2 + (y - mu_y) ** 2) / two_sigma_sq)
    return target, weight
