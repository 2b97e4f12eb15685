"""mmpose's `TopdownHeatmapSimpleHead` as configured for HRNetV2 on WFLW.

Resize every branch to branch 0's resolution (bilinear, align_corners=False), concatenate
in branch order, then `final_layer` = 1x1 conv (bias) + BN + ReLU + 1x1 conv to K channels.
No deconvolution layers, no output activation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HeatmapHead(nn.Module):
    """forward: list of `[N, C_b, h_b, w_b]` -> heatmaps `[N, K, h_0, w_0]`."""

    def __init__(self, in_channels: tuple[int, ...], num_keypoints: int):
        super().__init__()
        total = sum(in_channels)
        self.final_layer = nn.Sequential(
            nn.Conv2d(total, total, 1),
            nn.BatchNorm2d(total),
            nn.ReLU(inplace=True),
            nn.Conv2d(total, num_keypoints, 1),
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[2:]
        # Branch 0 already has the target size; resizing it would be an exact no-op.
        resized = [features[0]] + [
            F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features[1:]
        ]
        return self.final_layer(torch.cat(resized, dim=1))
