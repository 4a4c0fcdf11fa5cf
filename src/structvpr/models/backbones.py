"""Convolutional trunks: a small CNN for CPU-sized worlds and any timm model, including VGG16."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import nn


class Trunk(nn.Module):
    """A feature extractor ``(B, C_in, H, W) -> (B, out_channels, h, w)``."""

    out_channels: int


class SimpleCNN(Trunk):
    """A small all-convolutional trunk, ``(B, C_in, H, W) -> (B, C_out, H / 8, W / 8)``.

    Args:
        in_chans: Input channels (3 for RGB, G for one-hot label maps).
        widths: Channels of the four stages; the first three halve the resolution.

    """

    def __init__(self, in_chans: int = 3, widths: tuple[int, int, int, int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_chans
        for stage, width in enumerate(widths):
            stride = 2 if stage < 3 else 1
            convs = 1 if stage == 3 else 2
            for j in range(convs):
                layers += [nn.Conv2d(prev, width, 3, stride if j == 0 else 1, 1, bias=False),
                           nn.BatchNorm2d(width), nn.ReLU(inplace=True)]  # fmt: skip
                prev = width
        # The last ReLU is dropped, as NetVLAD does with VGG16 conv5_3.
        self.body = nn.Sequential(*layers[:-1])
        self.out_channels = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TimmTrunk(Trunk):
    """The feature extractor of a timm model, its first convolution adapted to ``in_chans``.

    ``vgg16`` is cut at conv5_3 with its last ReLU and pool dropped (the paper's trunk); other
    names return the last feature stage of ``features_only``. Pretrained weights are read
    from ``pretrained_path`` when given and never downloaded.

    Args:
        name: timm model name (``vgg16``, ``resnet18``, ``resnet50``, ...).
        in_chans: Input channels.
        pretrained_path: Local weight file (``.pth``/``.safetensors``) or None for random.

    """

    def __init__(self, name: str, in_chans: int = 3, pretrained_path: str | None = None) -> None:
        super().__init__()
        import timm

        if pretrained_path is not None and not Path(pretrained_path).is_file():
            raise FileNotFoundError(f"{pretrained_path}: pretrained weight file does not exist")
        kwargs: dict = {"pretrained": pretrained_path is not None, "in_chans": in_chans}
        if pretrained_path is not None:
            kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_path)}
        if name == "vgg16":
            model = timm.create_model("vgg16", **kwargs)
            self.body: nn.Module = cast(nn.Sequential, model.features)[:29]  # through conv5_3, before its ReLU
            self.out_channels = 512
        else:
            model = timm.create_model(name, features_only=True, out_indices=(-1,), **kwargs)
            self.body = model
            self.out_channels = int(cast(Any, model).feature_info.channels()[-1])
        self.is_features_only = name != "vgg16"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out[-1] if self.is_features_only else out


def build_trunk(name: str, in_chans: int, pretrained_path: str | None = None) -> Trunk:
    """``simple`` for :class:`SimpleCNN`, anything else a timm name for :class:`TimmTrunk`."""
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    if name == "simple":
        if pretrained_path is not None:
            raise ValueError("the simple trunk has no pretrained weights; set pretrained_path=None")
        return SimpleCNN(in_chans)
    return TimmTrunk(name, in_chans, pretrained_path)
