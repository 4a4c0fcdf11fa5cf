"""Write predicted descriptors (.npy) and top-k predictions in the MSLS submission format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from structvpr.protocols import datamodule_of
from structvpr.retrieval.search import knn
from structvpr.utils.io import atomic_path
from structvpr.utils.runs import run_folder


class PredictionWriter(pl.Callback):
    """After ``structvpr predict``: ``database_descriptors.npy``, ``query_descriptors.npy`` and
    ``predictions.txt`` whose rows are ``query_key pred_key_1 ... pred_key_k`` (keys are file
    stems, as the MSLS evaluation script and challenge expect).

    Single process: run predict with ``--trainer.devices 1``.

    Args:
        output_dir: Folder for the files (default: this run's own folder, ``<log dir>/version_N``).
        top_k: Predictions per query.

    """  # noqa: D205

    def __init__(self, output_dir: str | None = None, top_k: int = 25) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.output_dir, self.top_k = output_dir, top_k
        self.written: list[Path] = []

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            raise RuntimeError("PredictionWriter runs in one process: use --trainer.devices 1 for predict")
        outputs = trainer.predict_loop.predictions
        if outputs and isinstance(outputs[0], list):  # several dataloaders
            outputs = outputs[0]
        desc = torch.cat([o["descriptor"] for o in outputs]).float()
        index = torch.cat([o["index"] for o in outputs])
        desc = desc[torch.argsort(index)]
        dataset = datamodule_of(trainer).predict_dataset
        n_db = dataset.num_database
        paths = getattr(dataset, "paths", None) or [r.path for r in dataset.records]
        out = Path(self.output_dir) if self.output_dir else run_folder(trainer)
        out.mkdir(parents=True, exist_ok=True)
        top = knn(desc[n_db:], desc[:n_db], self.top_k)
        lines = [
            " ".join([Path(paths[n_db + q]).stem, *(Path(paths[j]).stem for j in row.tolist())]) for q, row in enumerate(top)
        ]
        files = {
            "database_descriptors.npy": desc[:n_db].numpy(),
            "query_descriptors.npy": desc[n_db:].numpy(),
            "predictions.txt": "\n".join(lines) + "\n",
        }
        for name, content in files.items():
            with atomic_path(out / name) as tmp:
                if isinstance(content, str):
                    tmp.write_text(content)
                else:
                    with open(tmp, "wb") as f:
                        np.save(f, np.asarray(content))
            self.written.append(out / name)
        print(f"wrote {len(lines)} query predictions (top {self.top_k}) and descriptors to {out}")
