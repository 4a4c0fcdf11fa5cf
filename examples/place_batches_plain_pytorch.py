"""The modern recipe in your own PyTorch loop: place batches, BoQ, and the multi-similarity loss.

``PlaceDataModule`` groups a dataset's images into places (UTM cells, or GSV-Cities' place ids) and
serves P places x K images per batch; any :class:`~structvpr.models.PlaceEncoder` (here a small CNN
with a small :class:`~structvpr.models.BoQ`) trains on them with pytorch-metric-learning's
multi-similarity loss and miner, the recipe of MixVPR, SALAD and BoQ, without Lightning::

    python examples/place_batches_plain_pytorch.py --root data/synthetic-tiny --steps 20

It prints the places it found and the loss every few steps.
"""

from __future__ import annotations

import argparse

import torch
from pytorch_metric_learning import losses, miners

from structvpr.data import PlaceDataModule
from structvpr.models import BoQ, PlaceEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/synthetic-tiny", help="a VG-format dataset with coordinates")
    parser.add_argument("--image-size", type=int, nargs=2, default=(32, 64))
    parser.add_argument("--places", type=int, default=3, help="P, places per batch")
    parser.add_argument("--views", type=int, default=2, help="K, images per place")
    parser.add_argument("--place-size", type=float, default=8.0, help="metres of a place's UTM cell")
    parser.add_argument("--steps", type=int, default=20)
    ns = parser.parse_args()
    torch.manual_seed(0)
    data = PlaceDataModule(
        places_per_batch=ns.places,
        images_per_place=ns.views,
        place_size_m=ns.place_size,
        root=ns.root,
        image_size=tuple(ns.image_size),
        with_labels=False,
        synthetic_preset="tiny",
    )
    data.prepare_data()
    data.setup("fit")
    batches = data.train_dataset
    print(f"{len(batches.places)} places, {len(batches)} batches of {ns.places} x {ns.views} per epoch")
    encoder = PlaceEncoder(
        3, trunk="simple", aggregator=lambda c: BoQ(c, proj_channels=64, num_queries=8, num_layers=1, row_dim=4)
    )
    loss_fn, miner = losses.MultiSimilarityLoss(alpha=1, beta=50, base=0), miners.MultiSimilarityMiner(epsilon=0.1)
    optimiser = torch.optim.AdamW(encoder.parameters(), lr=1e-3)
    step, epoch = 0, 0
    while step < ns.steps:
        batches.set_epoch(epoch)  # each epoch visits every place at most once, in a new order
        for b in range(len(batches)):
            batch = batches[b]
            desc = encoder.pooled(batch["image"].flatten(0, 1))  # (P * K, D)
            places = batch["place"].flatten()
            loss = loss_fn(desc, places, miner(desc, places))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if step % 5 == 0:
                print(f"step {step} epoch {epoch} loss {loss.item():.4f} descriptors {tuple(desc.shape)}")
            step += 1
            if step == ns.steps:
                break
        epoch += 1


if __name__ == "__main__":
    main()
