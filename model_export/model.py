"""The landmark model: HRNet backbone + heatmap head, built from a named architecture.

Attribute names `backbone` and `keypoint_head` are those of mmpose's `TopDown` detector,
so a checkpoint's `state_dict` maps onto this module one to one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .head import HeatmapHead
from .hrnet import HRNet, HRNetConfig


@dataclass(frozen=True)
class ModelConfig:
    name: str
    backbone: HRNetConfig
    num_keypoints: int = 98

    def to_dict(self) -> dict:
        return asdict(self)


ARCHITECTURES: dict[str, ModelConfig] = {
    # mmpose hrnetv2_w18_wflw_256x256_dark
    "hrnetv2_w18": ModelConfig("hrnetv2_w18", HRNetConfig.w18()),
    # Same topology, a few thousand parameters: for tests and CPU smoke runs.
    "hrnetv2_tiny": ModelConfig("hrnetv2_tiny", HRNetConfig.tiny()),
}


class LandmarkModel(nn.Module):
    """forward: `[N, 3, 256, 256]` normalised RGB -> heatmaps `[N, K, 64, 64]`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone = HRNet(config.backbone)
        self.keypoint_head = HeatmapHead(config.backbone.out_channels, config.num_keypoints)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.keypoint_head(self.backbone(x))


def build_model(arch: str = "hrnetv2_w18") -> LandmarkModel:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
    model = LandmarkModel(ARCHITECTURES[arch])
    init_mmpose(model)
    return model


def init_mmpose(model: nn.Module) -> None:
    """mmpose's initialisation: convs normal(0, 0.001) with zero bias, BN weight 1, bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.001)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def randomize_for_demo(model: nn.Module, seed: int = 0, input_size: int = 256) -> None:
    """Weights for an *untrained* demo/test model whose heatmaps have structure.

    mmpose's std-0.001 init gives all-but-zero heatmaps, which exercise none of the decode.
    Kaiming weights plus BN statistics recalibrated on random inputs give unit-scale,
    spatially varying maps. The exported file is marked trained=false.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    was_training = model.training
    model.train()
    for _ in range(2):
        model(torch.randn(4, 3, input_size, input_size, generator=gen))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    model.train(was_training)
