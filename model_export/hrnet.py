"""HRNet backbone, laid out module-for-module like mmpose 0.x's `HRNet` so that the
official checkpoint's `backbone.*` keys load with `strict=True` and nothing renamed.

The architecture is data (`HRNetConfig`): stem width, stage 1 bottlenecks, then stages of
parallel branches. `HRNetConfig.w18()` is HRNetV2-W18; `HRNetConfig.tiny()` is a small
variant with the same topology for fast tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class StageConfig:
    num_modules: int
    block: str  # "BASIC" or "BOTTLENECK"
    num_blocks: tuple[int, ...]  # blocks per branch
    num_channels: tuple[int, ...]  # width per branch (before block expansion)

    @property
    def num_branches(self) -> int:
        return len(self.num_channels)


@dataclass(frozen=True)
class HRNetConfig:
    in_channels: int = 3
    stem_channels: int = 64
    stages: tuple[StageConfig, ...] = field(default_factory=tuple)
    # mmpose's WFLW configs fuse branches with bilinear upsampling (align_corners=False),
    # not the nearest-neighbour upsampling of the original HRNet.
    upsample_mode: str = "bilinear"

    @classmethod
    def w18(cls) -> HRNetConfig:
        return cls(
            stages=(
                StageConfig(1, "BOTTLENECK", (4,), (64,)),
                StageConfig(1, "BASIC", (4, 4), (18, 36)),
                StageConfig(4, "BASIC", (4, 4, 4), (18, 36, 72)),
                StageConfig(3, "BASIC", (4, 4, 4, 4), (18, 36, 72, 144)),
            )
        )

    @classmethod
    def tiny(cls) -> HRNetConfig:
        return cls(
            stem_channels=16,
            stages=(
                StageConfig(1, "BOTTLENECK", (1,), (8,)),
                StageConfig(1, "BASIC", (1, 1), (4, 8)),
                StageConfig(1, "BASIC", (1, 1, 1), (4, 8, 16)),
                StageConfig(1, "BASIC", (1, 1, 1, 1), (4, 8, 16, 32)),
            )
        )

    @property
    def out_channels(self) -> tuple[int, ...]:
        last = self.stages[-1]
        return tuple(c * BLOCKS[last.block].expansion for c in last.num_channels)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(in_ch, ch, stride)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = conv3x3(ch, ch)
        self.bn2 = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet bottleneck, 'pytorch' style (stride on the 3x3 conv) as in mmpose."""

    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(in_ch, ch)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = conv3x3(ch, ch, stride)
        self.bn2 = nn.BatchNorm2d(ch)
        self.conv3 = conv1x1(ch, ch * self.expansion)
        self.bn3 = nn.BatchNorm2d(ch * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


BLOCKS: dict[str, type[BasicBlock | Bottleneck]] = {
    "BASIC": BasicBlock,
    "BOTTLENECK": Bottleneck,
}


def make_blocks(block: type, in_ch: int, ch: int, num_blocks: int) -> nn.Sequential:
    """A chain of residual blocks; the first gets a 1x1 conv + BN shortcut if widths differ."""
    out_ch = ch * block.expansion
    downsample = None
    if in_ch != out_ch:
        downsample = nn.Sequential(conv1x1(in_ch, out_ch), nn.BatchNorm2d(out_ch))
    layers = [block(in_ch, ch, downsample=downsample)]
    layers += [block(out_ch, ch) for _ in range(1, num_blocks)]
    return nn.Sequential(*layers)


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int, relu: bool) -> nn.Sequential:
    conv = conv3x3(in_ch, out_ch, stride) if kernel == 3 else conv1x1(in_ch, out_ch, stride)
    layers: list[nn.Module] = [conv, nn.BatchNorm2d(out_ch)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Upsample(nn.Module):
    """Fixed-factor resize (a module so the fuse layers keep mmpose's Sequential indices)."""

    def __init__(self, scale_factor: int, mode: str):
        super().__init__()
        self.scale_factor = scale_factor
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        align = False if self.mode in ("bilinear", "bicubic") else None
        return F.interpolate(x, scale_factor=self.scale_factor, mode=self.mode, align_corners=align)


class HRModule(nn.Module):
    """Parallel branches of residual blocks, then every branch fuses every other branch.

    Output i = ReLU(sum over j, in j order, of branch j brought to branch i's resolution
    and width): j > i by 1x1 conv + BN + upsampling, j < i by stride-2 3x3 convs.
    """

    def __init__(self, in_channels: list[int], stage: StageConfig, upsample_mode: str):
        super().__init__()
        block = BLOCKS[stage.block]
        self.branches = nn.ModuleList(
            make_blocks(block, in_channels[i], stage.num_channels[i], stage.num_blocks[i])
            for i in range(stage.num_branches)
        )
        widths = [c * block.expansion for c in stage.num_channels]
        self.out_channels = widths
        self.fuse_layers = (
            nn.ModuleList(
                nn.ModuleList(self._fuse(widths, i, j, upsample_mode) for j in range(len(widths)))
                for i in range(len(widths))
            )
            if len(widths) > 1
            else None
        )
        self.relu = nn.ReLU(inplace=False)

    @staticmethod
    def _fuse(widths: list[int], i: int, j: int, upsample_mode: str) -> nn.Module | None:
        if j == i:
            return None
        if j > i:
            return nn.Sequential(
                conv1x1(widths[j], widths[i]),
                nn.BatchNorm2d(widths[i]),
                Upsample(2 ** (j - i), upsample_mode),
            )
        steps = i - j
        return nn.Sequential(
            *(
                conv_bn(widths[j], widths[i], 3, 2, relu=False)
                if k == steps - 1
                else conv_bn(widths[j], widths[j], 3, 2, relu=True)
                for k in range(steps)
            )
        )

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.fuse_layers is None:
            return xs
        fused = []
        for _i, row in enumerate(self.fuse_layers):
            total = None
            for j, layer in enumerate(row):
                term = xs[j] if layer is None else layer(xs[j])
                total = term if total is None else total + term
            fused.append(self.relu(total))
        return fused


class HRNet(nn.Module):
    """Stem (two stride-2 3x3 convs), stage 1 (`layer1`), then transitions + HR stages.

    forward: `[N, 3, H, W]` -> list of `[N, C_b, H/4 / 2^b, W/4 / 2^b]`, one per branch b.
    """

    def __init__(self, config: HRNetConfig):
        super().__init__()
        self.config = config
        stem = config.stem_channels
        self.conv1 = conv3x3(config.in_channels, stem, stride=2)
        self.bn1 = nn.BatchNorm2d(stem)
        self.conv2 = conv3x3(stem, stem, stride=2)
        self.bn2 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)

        stage1, *hr_stages = config.stages
        block1 = BLOCKS[stage1.block]
        self.layer1 = make_blocks(block1, stem, stage1.num_channels[0], stage1.num_blocks[0])
        prev_widths = [stage1.num_channels[0] * block1.expansion]

        for index, stage in enumerate(hr_stages, start=2):
            widths = [c * BLOCKS[stage.block].expansion for c in stage.num_channels]
            setattr(self, f"transition{index - 1}", self._transition(prev_widths, widths))
            modules = []
            in_widths = widths
            for _ in range(stage.num_modules):
                module = HRModule(in_widths, stage, config.upsample_mode)
                in_widths = module.out_channels
                modules.append(module)
            setattr(self, f"stage{index}", nn.Sequential(*modules))
            prev_widths = in_widths
        self.num_hr_stages = len(hr_stages)

    @staticmethod
    def _transition(prev: list[int], cur: list[int]) -> nn.ModuleList:
        """Existing branches: 3x3 conv+BN+ReLU if the width changes (else None).
        New branches: a chain of stride-2 convs from the last previous branch."""
        layers: list[nn.Module | None] = []
        for i, width in enumerate(cur):
            if i < len(prev):
                layers.append(conv_bn(prev[i], width, 3, 1, relu=True) if prev[i] != width else None)
                continue
            steps = i + 1 - len(prev)
            chain = [
                conv_bn(prev[-1], width if k == steps - 1 else prev[-1], 3, 2, relu=True)
                for k in range(steps)
            ]
            layers.append(nn.Sequential(*chain))
        return nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for index in range(2, self.num_hr_stages + 2):
            transition = getattr(self, f"transition{index - 1}")
            inputs = []
            for i, layer in enumerate(transition):
                source = xs[i] if i < len(xs) else xs[-1]
                inputs.append(source if layer is None else layer(source))
            xs = list(inputs)
            for module in getattr(self, f"stage{index}"):
                xs = module(xs)
        return xs
