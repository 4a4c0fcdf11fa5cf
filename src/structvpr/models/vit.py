"""ViTTrunk: a timm vision transformer (DINOv2 above all) as a trunk: patch-token map plus CLS token."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from structvpr.models.backbones import Trunk


class ViTTrunk(Trunk):
    """A timm ViT cut into a trunk: ``(B, C_in, H, W) -> (B, C, H / p, W / p)`` patch tokens, and the CLS token.

    Built with ``dynamic_img_size``, so one model trains at 224 and tests at 322 (the position
    embedding is interpolated to every input size); without any download. The recipes of
    SALAD and BoQ train only the last blocks of DINOv2 (``train_blocks``): the patch embedding,
    position embedding, CLS token and earlier blocks are frozen, and since nothing before the
    first trained block then needs a gradient, those blocks run without building a graph. A
    teacher on ``G`` label-map channels keeps its adapted patch embedding trainable (its weights
    come from RGB ones).

    Pretrained weights load strictly from a local file in Meta's format (``torch.hub``'s
    ``dinov2_vits14`` state dict: ``mask_token`` and a 37x37 position grid) or in timm's
    own; the position embedding is resampled and the patch embedding adapted to ``in_chans``
    as timm does. A file that lacks any of the model's tensors, or holds others, fails with
    their names.

    Args:
        in_chans: Input channels (3 for RGB, G for a one-hot label map).
        name: timm model name: ``vit_small_patch14_dinov2`` (384 channels),
            ``vit_base_patch14_dinov2`` (768), their ``_reg4_`` variants, or another timm ViT.
        img_size: The size the position embedding is built for (inputs may differ).
        train_blocks: Train only the last N blocks (SALAD: 4 of ViT-B; BoQ: 2); None trains all.
        final_norm: Apply the ViT's last LayerNorm to the tokens (SALAD does; BoQ does not).
        pretrained_path: Local weight file, or None for random weights.
        model_kwargs: Extra keyword arguments of ``timm.create_model`` (e.g. ``depth=2`` for a
            test-sized model).

    """

    def __init__(
        self,
        in_chans: int = 3,
        name: str = "vit_small_patch14_dinov2",
        img_size: int | tuple[int, int] = 224,
        train_blocks: int | None = None,
        final_norm: bool = True,
        pretrained_path: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        import timm

        kwargs: dict[str, Any] = {
            "img_size": img_size,
            "dynamic_img_size": True,
            "num_classes": 0,
            "in_chans": in_chans,
            **(model_kwargs or {}),
        }
        if pretrained_path is None:
            self.model: Any = timm.create_model(name, pretrained=False, **kwargs)
        else:
            self.model = _load_pretrained(name, pretrained_path, kwargs)
        self.patch_size = int(self.model.patch_embed.patch_size[0])
        self.out_channels = int(self.model.embed_dim)
        self.final_norm = final_norm
        self.in_chans = in_chans
        blocks = len(self.model.blocks)
        if train_blocks is not None:
            if not 0 <= train_blocks <= blocks:
                raise ValueError(f"train_blocks must lie in [0, {blocks}] for {name}, got {train_blocks}")
            self.freeze_below(f"blocks.{blocks - train_blocks}")

    def freeze_below(self, stage: str) -> int:
        """Train only from ``blocks.N`` on (``blocks.8`` of a 12-block ViT trains the last 4); returns
        the number of parameters frozen. The patch embedding stays trainable for ``in_chans != 3``."""  # noqa: D205
        blocks = len(self.model.blocks)
        first = stage.removeprefix("blocks.")
        if not stage.startswith("blocks.") or not first.isdigit() or not 0 <= int(first) <= blocks:
            raise ValueError(f"a ViT trunk is frozen below 'blocks.N' with N in [0, {blocks}], got {stage!r}")
        frozen: list[nn.Parameter | nn.Module] = [*self.model.blocks[: int(first)]]
        frozen += [
            p for p in (self.model.cls_token, self.model.pos_embed, getattr(self.model, "reg_token", None)) if p is not None
        ]
        if self.in_chans == 3:
            frozen.append(self.model.patch_embed)
        count = 0
        for item in frozen:
            for p in item.parameters() if isinstance(item, nn.Module) else [item]:
                p.requires_grad_(False)
                count += p.numel()
        return count

    def check_size(self, height: int, width: int) -> None:
        """Raise when an input side is not a multiple of the patch size, naming the nearest valid one."""
        p = self.patch_size
        bad = [(side, n) for side, n in (("height", height), ("width", width)) if n % p]
        if bad:
            hint = ", ".join(f"{side} {n} -> {max(p, round(n / p) * p)}" for side, n in bad)
            raise ValueError(f"a ViT with {p}-pixel patches needs image sides that are multiples of {p}: {hint}")

    def forward_with_token(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C_in, H, W) -> ((B, C, H / p, W / p), (B, C))``: patch-token map and CLS token."""
        self.check_size(x.shape[-2], x.shape[-1])
        [(fmap, prefix)] = self.model.forward_intermediates(
            x, indices=1, return_prefix_tokens=True, norm=self.final_norm, intermediates_only=True
        )
        return fmap, prefix[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_token(x)[0]


def _load_pretrained(name: str, path: str, kwargs: dict[str, Any]) -> Any:
    import timm

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: pretrained weight file does not exist")
    try:  # timm's own loader: Meta's keys converted, position grid resampled, patch embedding adapted
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    except RuntimeError as err:  # strict load_state_dict: names the missing and unexpected keys
        raise ValueError(f"{path}: not a weight file of {name} (in Meta's or timm's keys): {err}") from err
    logging.getLogger(__name__).info(f"{path}: loaded every tensor of {name}")
    return model
