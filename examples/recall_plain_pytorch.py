"""Recall@N in a plain PyTorch loop: no Lightning trainer, just a model, a DataLoader and RecallAtN.

``RecallAtN`` is a torchmetrics metric: feed it descriptors with their dataset indices, query
flags and UTM coordinates in any order and batch size, then ``compute()``. Here the model is an
exported student and the data a VG-format split (the synthetic world's, by default).

    python examples/recall_plain_pytorch.py --ckpt student.ckpt --root data/synthetic-demo --split test
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader

from structvpr import StructVPRStudent
from structvpr.data.datasets import ImageDataset, joint_transform
from structvpr.data.vg import read_split
from structvpr.metrics import RecallAtN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--root", default="data/synthetic-demo", help="a dataset root in the VG @ format")
    parser.add_argument("--split", default="test")
    parser.add_argument("--image-size", type=int, nargs=2, default=[48, 96], metavar=("H", "W"))
    ns = parser.parse_args()

    model = StructVPRStudent.load_from_checkpoint(ns.ckpt, map_location="cpu", weights_only=True).eval()
    dataset = ImageDataset(
        read_split(ns.root, ns.split, "database"),
        read_split(ns.root, ns.split, "queries"),
        joint_transform(tuple(ns.image_size), train=False),
    )
    metric = RecallAtN(ns=(1, 5, 10), radius=25.0)
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=64):
            metric.update(model(batch["image"]), batch["index"], batch["is_query"], batch["utm"])
    result = metric.compute()
    print(" ".join(f"{k}={100 * float(v):.1f}" if k.startswith("R@") else f"{k}={int(v)}" for k, v in result.items()))


if __name__ == "__main__":
    main()
