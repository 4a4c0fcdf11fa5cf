"""Encode two folders of images with an exported student and search one with the other in faiss.

The student needs nothing of structvpr's training side: no teacher, no label maps, no
datamodule. Images are resized to the size the student was trained at and normalised with the
ImageNet statistics, as in training.

    python examples/encode_and_search.py --ckpt student.ckpt --database DB_DIR --queries QUERY_DIR \\
        --image-size 480 640 --top-k 5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import faiss
import numpy as np
import torch
from torch.utils.data import DataLoader

from structvpr import StructVPRStudent
from structvpr.data.datasets import FolderDataset, joint_transform


def encode(model: StructVPRStudent, loader: DataLoader) -> np.ndarray:
    """``(N, D)`` float32 descriptors of every image of ``loader``, in order."""
    return torch.cat([model.encode(batch["image"]).cpu() for batch in loader]).numpy().astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="an exported StructVPRStudent checkpoint")
    parser.add_argument("--database", required=True, help="folder of database images")
    parser.add_argument("--queries", required=True, help="folder of query images")
    parser.add_argument("--image-size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    parser.add_argument("--top-k", type=int, default=5)
    ns = parser.parse_args()

    model = StructVPRStudent.load_from_checkpoint(ns.ckpt, map_location="cpu", weights_only=True)
    dataset = FolderDataset.from_folders(ns.database, ns.queries, joint_transform(tuple(ns.image_size), train=False))
    loader = DataLoader(dataset, batch_size=32)
    desc = encode(model, loader)
    database, queries = desc[: dataset.num_database], desc[dataset.num_database :]

    index = faiss.IndexFlatL2(database.shape[1])  # exact search; descriptors are L2-normalised
    index.add(database)
    distances, found = index.search(queries, min(ns.top_k, len(database)))
    for q, (row, dist) in enumerate(zip(found, distances)):
        name = Path(dataset.paths[dataset.num_database + q]).name
        matches = ", ".join(f"{Path(dataset.paths[j]).name} ({d:.3f})" for j, d in zip(row, dist))
        print(f"{name} -> {matches}")


if __name__ == "__main__":
    main()
