"""Plug your own aggregator into structvpr from a config, without editing the library.

A model's ``aggregator`` is ``gem``, ``netvlad`` or any class whose first argument is the
trunk's output channels: it maps a feature map ``(B, C, h, w)`` to ``(B, D)`` and says ``D``
through ``output_dim(channels)``. In a config (or on the command line) it is a ``class_path``
with the other ``init_args``; structvpr fills ``channels`` in. This script trains the RGB
baseline for one epoch with :class:`MeanMaxPool` on a synthetic world and prints its
descriptor size::

    python examples/custom_aggregator.py --root data/synthetic-tiny

The same in YAML::

    model:
      init_args:
        aggregator:
          class_path: custom_aggregator.MeanMaxPool   # importable: examples/ on PYTHONPATH
          init_args:
            scale: 2.0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn


class MeanMaxPool(nn.Module):
    """Average and max pooling side by side, ``(B, C, h, w) -> (B, 2C)``.

    Args:
        channels: Trunk output channels (filled in by structvpr).
        scale: Weight of the max half.
    """

    def __init__(self, channels: int, scale: float = 1.0) -> None:
        super().__init__()
        self.channels, self.scale = channels, scale

    def output_dim(self, channels: int) -> int:
        """Descriptor size for ``channels`` trunk channels."""
        return 2 * channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(-2, -1)), self.scale * x.amax(dim=(-2, -1))], dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/synthetic-tiny", help="a VG-format world (generated if missing)")
    parser.add_argument("--out", default="runs/examples/custom_aggregator")
    ns = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # so `custom_aggregator.MeanMaxPool` imports

    from structvpr.cli import cli_main
    from structvpr.data import synthetic

    if not Path(ns.root).exists():
        synthetic.generate(ns.root, "tiny", seed=0)
    config = Path(__file__).resolve().parents[1] / "lightning_configs/synthetic/baseline.yaml"
    cli = cli_main(
        [
            "fit",
            "--config",
            str(config),
            f"--data.init_args.root={ns.root}",
            "--data.init_args.image_size=[32, 64]",
            "--data.init_args.num_workers=0",
            "--model.init_args.aggregator.class_path=custom_aggregator.MeanMaxPool",
            "--model.init_args.aggregator.init_args.scale=2.0",
            "--trainer.max_epochs=1",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={ns.out}",
        ]
    )
    encoder = cli.model.encoder
    print(
        f"aggregator {type(encoder.aggregator).__name__}: descriptors of {encoder.descriptor_dim} dimensions, "
        f"val/R@1 {float(cli.trainer.callback_metrics['val/R@1']):.1f}"
    )


if __name__ == "__main__":
    main()
