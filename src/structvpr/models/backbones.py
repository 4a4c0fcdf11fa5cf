"""Convolutional trunks: a small CNN for CPU-sized worlds and any timm model, including VGG16."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
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
                layers += [
                    nn.Conv2d(prev, width, 3, stride if j == 0 else 1, 1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                prev = width
        # The last ReLU is dropped, as NetVLAD does with VGG16 conv5_3.
        self.body = nn.Sequential(*layers[:-1])
        self.out_channels = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TimmTrunk(Trunk):
    """The feature extractor of a timm model, its first convolution adapted to ``in_chans``.

    ``vgg16`` is cut at conv5_3 with its last ReLU and pool dropped (the paper's trunk); other
    names return the last feature stage of ``features_only``, or the stage after a colon:
    ``resnet50:layer3`` is ResNet50 cut after layer3 (1024 channels at 1/16, the MixVPR and BoQ
    trunk; train from layer3 on with ``freeze_below("layer3")``). Pretrained weights are read
    from ``pretrained_path`` when given (never downloaded) by :func:`load_trunk_weights`, which
    fails when any trunk tensor stays without a weight.

    Args:
        name: timm model name (``vgg16``, ``resnet18``, ``resnet50``, ...), optionally ``:stage``.
        in_chans: Input channels.
        pretrained_path: Local weight file (``.pth``/``.safetensors``) or None for random.

    """

    def __init__(self, name: str, in_chans: int = 3, pretrained_path: str | None = None) -> None:
        super().__init__()
        import timm

        if pretrained_path is not None and not Path(pretrained_path).is_file():
            raise FileNotFoundError(f"{pretrained_path}: pretrained weight file does not exist")
        if name == "vgg16":
            model = timm.create_model("vgg16", pretrained=False, in_chans=in_chans)
            self.body: nn.Module = cast(nn.Sequential, model.features)[:29]  # through conv5_3, before its ReLU
            self.out_channels = 512
            prefix = "features."
        else:
            name, _, stage = name.partition(":")
            out_index = -1
            if stage:  # "resnet50:layer3": cut after that feature stage (the MixVPR and BoQ recipes)
                full: Any = timm.create_model(name, features_only=True, pretrained=False)
                stages = full.feature_info.module_name()
                if stage not in stages:
                    raise ValueError(f"{name} has the feature stages {stages}, got {stage!r}")
                out_index = stages.index(stage)
            model = timm.create_model(name, features_only=True, out_indices=(out_index,), pretrained=False, in_chans=in_chans)
            self.body = model
            info: Any = model.feature_info  # timm's FeatureInfo (torch's stubs type module attributes loosely)
            self.out_channels = int(info.channels()[-1])
            prefix = ""
        self.is_features_only = name != "vgg16"
        self.in_chans = in_chans
        self._frozen: list[nn.Module] = []
        #: What loading ``pretrained_path`` matched (None without a file).
        self.load_report: LoadReport | None = None
        if pretrained_path is not None:
            self.load_report = report = load_trunk_weights(self.body, pretrained_path, name, prefix)
            log = logging.getLogger(__name__)
            log.info(
                f"{pretrained_path}: loaded all {report.loaded} tensors of the {name} trunk"
                + (f"; adapted to {in_chans} input channels: {', '.join(report.adapted)}" if report.adapted else "")
            )
            if report.unused:  # a classifier is expected; anything else may be a wrong file: say so loudly
                log.warning(
                    f"{pretrained_path}: {len(report.unused)} tensors of the file are not used by the {name} "
                    f"trunk: {', '.join(report.unused[:6])}{' ...' if len(report.unused) > 6 else ''}"
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out[-1] if self.is_features_only else out

    def freeze_below(self, stage: str) -> int:
        """Stop training every layer before ``stage``; returns the number of parameters frozen.

        ``vgg16``: ``"conv5"`` (the NetVLAD and VG-benchmark references train conv5 only),
        ``"conv4"``, ... Other timm trunks: the name of the first top-level module to train
        (``layer4`` of a ResNet freezes the stem and ``layer1`` .. ``layer3``).
        Frozen layers keep their BatchNorm statistics too (they stay in eval mode). With other
        than 3 input channels (a label-map teacher) the first convolution stays trainable: its
        weights are adapted from RGB ones, or random.
        """
        names = [name for name, _ in self.body.named_children()]
        if not self.is_features_only and isinstance(stage, str) and stage.startswith("conv") and stage[4:].isdigit():
            block = int(stage[4:])
            convs = [i for i, m in enumerate(cast(nn.Sequential, self.body)) if isinstance(m, nn.Conv2d)]
            starts = [convs[0], convs[2], convs[4], convs[7], convs[10]]  # conv1_1 .. conv5_1 of VGG16
            if not 1 <= block <= 5:
                raise ValueError(f"vgg16 has blocks conv1 .. conv5, got {stage!r}")
            first = starts[block - 1]
        elif stage in names:
            first = names.index(stage)
        else:
            raise ValueError(f"unknown stage {stage!r}: a vgg16 block (conv1 .. conv5) or one of {names}")
        frozen = 0
        for name, child in self.body.named_children():
            if names.index(name) >= first:
                break
            for param in child.parameters():
                param.requires_grad_(False)
                frozen += param.numel()
            self._frozen.append(child)
        if self.in_chans != 3:  # the adapted first convolution reads other channels (label maps): it trains
            first_conv = next(m for m in self.body.modules() if isinstance(m, nn.Conv2d))
            thawed = [param for param in first_conv.parameters() if not param.requires_grad]
            frozen -= sum(param.numel() for param in thawed)
            for param in thawed:
                param.requires_grad_(True)
        return frozen

    def train(self, mode: bool = True) -> TimmTrunk:
        super().train(mode)
        for child in self._frozen:
            child.eval()
        return self


@dataclass
class LoadReport:
    """What :func:`load_trunk_weights` did: tensors loaded, file keys left unused."""

    loaded: int
    unused: list[str]
    adapted: list[str]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.pt``/``.bin`` (``torch.save``, read with ``weights_only=True``) or
    ``.safetensors`` file; a ``state_dict`` or ``model`` entry is unwrapped, ``module.`` prefixes
    (DataParallel) are dropped."""  # noqa: D205
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: cannot read a state dict ({err})") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: holds no mapping of names to tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_trunk_weights(body: nn.Module, path: str | Path, name: str, prefix: str = "") -> LoadReport:
    """Load a weight file into a trunk strictly: every trunk tensor must get a weight.

    File keys are the timm model's own (for ``vgg16`` also torchvision's, which are the same:
    ``features.N.*``); ``prefix`` is what the file puts before the trunk's keys. Keys the
    trunk has no use for (a classifier, ``pre_logits``) are reported, not loaded. A first
    convolution saved for 3 channels is adapted to the trunk's input channels as timm does.

    Raises:
        ValueError: naming the trunk tensors that found no weight of the right shape.
    """
    import timm.models

    own = body.state_dict()
    state = read_state_dict(path)
    matched: dict[str, torch.Tensor] = {}
    adapted: list[str] = []
    wrong_shape: list[str] = []
    for key, value in state.items():
        target = key[len(prefix) :] if key.startswith(prefix) else None
        if target is None or target not in own:
            continue
        want = own[target]
        if value.shape == want.shape:
            matched[target] = value
        elif value.ndim == 4 and want.ndim == 4 and value.shape[1] == 3 and value.shape[0] == want.shape[0]:
            matched[target] = timm.models.adapt_input_conv(want.shape[1], value)  # RGB weights, G channels
            adapted.append(target)
        else:
            wrong_shape.append(f"{key}: the file has {tuple(value.shape)}, the trunk needs {tuple(want.shape)}")
    if wrong_shape:
        raise ValueError(
            f"{path}: {len(wrong_shape)} tensors have the wrong shape for the {name} trunk: "
            + "; ".join(wrong_shape[:4])
            + (" ..." if len(wrong_shape) > 4 else "")
        )
    # BatchNorm's step counters: older checkpoints lack them and torch's strict loading accepts that
    # (they only matter for momentum=None); they keep the trunk's own value.
    missing = [k for k in own if k not in matched and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} of {len(own)} tensors of the {name} trunk get no weight from this file "
            f"(e.g. {', '.join(missing[:4])}); the file holds {len(state)} tensors "
            f"(e.g. {', '.join(list(state)[:4])}). Give a state dict with timm's keys for '{name}'"
            + (f" (prefixed '{prefix}')" if prefix else "")
        )
    body.load_state_dict({**{k: v for k, v in own.items() if k not in matched}, **matched}, strict=True)
    unused = [k for k in state if not (k.startswith(prefix) and k[len(prefix) :] in matched)]
    return LoadReport(len(matched), unused, adapted)


def build_trunk(name: str | Callable[[int], nn.Module], in_chans: int, pretrained_path: str | None = None) -> nn.Module:
    """``simple`` for :class:`SimpleCNN`, a timm ViT name (``vit_small_patch14_dinov2``, ...) for
    :class:`~structvpr.models.ViTTrunk` (224 position grid, every block trained), any other string a
    timm name for :class:`TimmTrunk`, or a
    callable building a trunk from the input channels (a config ``class_path``): a module
    ``(B, in_chans, H, W) -> (B, C, h, w)`` with an ``out_channels`` attribute."""  # noqa: D205
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    if not isinstance(name, str):
        if pretrained_path is not None:
            raise ValueError(
                "pretrained_path applies to a trunk given by name; a trunk given by class_path takes its weight "
                "file in its own init_args (e.g. ViTTrunk's pretrained_path)"
            )
        trunk = name(in_chans)
        if not isinstance(getattr(trunk, "out_channels", None), int):
            raise TypeError(f"{type(trunk).__name__} needs an int out_channels attribute (its feature-map channels)")
        return trunk
    if name == "simple":
        if pretrained_path is not None:
            raise ValueError("the simple trunk has no pretrained weights; set pretrained_path=None")
        return SimpleCNN(in_chans)
    if name.startswith("vit_"):
        from structvpr.models.vit import ViTTrunk

        return ViTTrunk(in_chans, name, pretrained_path=pretrained_path)
    return TimmTrunk(name, in_chans, pretrained_path)
