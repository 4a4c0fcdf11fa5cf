"""Retrieval pictures: a grid of queries with their top-k, and a Recall@N curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image

from structvpr.data.datasets import load_rgb
from structvpr.metrics.recall import RecallAtN, first_occurrences, first_positive_rank, hit_matrix
from structvpr.protocols import datamodule_of
from structvpr.retrieval.search import knn
from structvpr.utils.io import atomic_path
from structvpr.utils.runs import run_folder

GREEN, RED, WHITE = (40, 200, 60), (220, 40, 40), (255, 255, 255)


class RetrievalPictures(pl.Callback):
    """Save and log a top-k grid PNG and a Recall@N curve PNG after validation and/or test.

    Each grid row is a query (white border) followed by its top-k database images, framed
    green when correct and red otherwise, by the same rule as the task's Recall@N metric
    (its radius, or the benchmark's ground-truth lists). The pictures are written under
    the trainer's log folder (``pictures/``) and sent to the active wandb or TensorBoard logger.

    Args:
        num_queries: Rows of the grid.
        top_k: Database images per row.
        failures_only: Draw only queries whose top-1 is wrong.
        max_n: The curve runs from N=1 to ``max_n``.
        stages: ``val`` and/or ``test``.
        radius: Correct-match radius when the task has no Recall@N metric for the stage.
        every_n_epochs: For validation, draw every n-th epoch.
        seed: Which queries are drawn.

    """

    def __init__(
        self,
        num_queries: int = 8,
        top_k: int = 5,
        failures_only: bool = False,
        max_n: int = 25,
        stages: tuple[str, ...] = ("test",),
        radius: float = 25.0,
        every_n_epochs: int = 1,
        seed: int = 0,
    ) -> None:
        if num_queries < 1 or top_k < 1 or max_n < 1:
            raise ValueError(f"num_queries, top_k and max_n must be >= 1, got {num_queries}, {top_k}, {max_n}")
        bad = set(stages) - {"val", "test"}
        if bad:
            raise ValueError(f"stages must be 'val' and/or 'test', got {sorted(bad)}")
        self.num_queries, self.top_k, self.failures_only, self.max_n = num_queries, top_k, failures_only, max_n
        self.stages, self.radius, self.every_n_epochs, self.seed = tuple(stages), radius, every_n_epochs, seed
        self._outputs: list[dict[str, torch.Tensor]] = []
        self.saved: list[Path] = []

    def _collect(self, outputs: Any, batch: dict[str, Any]) -> None:
        if isinstance(outputs, dict) and "descriptor" in outputs:
            self._outputs.append({"descriptor": outputs["descriptor"].detach().cpu(), "index": batch["index"].cpu()})

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if "val" in self.stages and not trainer.sanity_checking:
            self._collect(outputs, batch)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if "test" in self.stages:
            self._collect(outputs, batch)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "val" in self.stages and not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0:
            self._draw(trainer, "val", datamodule_of(trainer).val_dataset, getattr(pl_module, "val_recall", None))
        self._outputs = []

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "test" in self.stages:
            self._draw(trainer, "test", datamodule_of(trainer).test_dataset, getattr(pl_module, "test_recall", None))
        self._outputs = []

    def _draw(self, trainer: pl.Trainer, stage: str, dataset: Any, metric: Any = None) -> None:
        if not self._outputs or not trainer.is_global_zero:
            return
        desc = torch.cat([o["descriptor"] for o in self._outputs])
        idx = torch.cat([o["index"] for o in self._outputs])
        keep = first_occurrences(idx)
        desc, idx = desc[keep], idx[keep]
        n_db = dataset.num_database
        db, qs = desc[:n_db], desc[n_db:]
        utm = dataset.utm
        retrieved = knn(qs, db, self.top_k)
        rule: dict[str, Any] = (
            metric.match_rule(utm[n_db:], utm[:n_db])
            if isinstance(metric, RecallAtN)
            else {"query_utm": utm[n_db:], "database_utm": utm[:n_db], "radius": self.radius}
        )
        correct, _ = hit_matrix(retrieved, **rule)
        ranks, valid = first_positive_rank(qs, db, self.max_n, database_groups=getattr(metric, "database_groups", None), **rule)
        candidates = np.flatnonzero(valid.numpy() & (~correct[:, 0].numpy() if self.failures_only else True))
        rng = np.random.default_rng(self.seed)
        rows = np.sort(rng.choice(candidates, min(self.num_queries, len(candidates)), replace=False))
        folder = run_folder(trainer) / "pictures"
        folder.mkdir(parents=True, exist_ok=True)
        tag = f"{stage}_epoch{trainer.current_epoch:02d}" if stage == "val" else stage
        grid_path = folder / f"retrieval_{tag}.png"
        curve_path = folder / f"recall_curve_{tag}.png"
        grid = retrieval_grid(
            [dataset.records[n_db + q].path for q in rows],
            [[dataset.records[j].path for j in retrieved[q].tolist()] for q in rows],
            correct[rows].numpy(),
        )
        _save_atomic(grid, grid_path)
        recall_curve(ranks[valid], self.max_n, curve_path, title=f"Recall@N ({stage}, {int(valid.sum())} queries)")
        self.saved += [grid_path, curve_path]
        for logger in trainer.loggers:
            _log_image(logger, f"{stage}/retrieval", grid_path, trainer.global_step)
            _log_image(logger, f"{stage}/recall_curve", curve_path, trainer.global_step)


def retrieval_grid(queries: list[Path], results: list[list[Path]], correct: np.ndarray, border: int = 3) -> Image.Image:
    """Rows of ``query | result_1 .. result_k`` with white, green (correct) or red (wrong) borders."""
    tiles = []
    for q, res, ok in zip(queries, results, correct):
        row = [_framed(load_rgb(q), WHITE, border)]
        row += [_framed(load_rgb(p), GREEN if c else RED, border) for p, c in zip(res, ok)]
        h = max(t.shape[0] for t in row)
        row = [np.pad(t, ((0, h - t.shape[0]), (0, 6), (0, 0)), constant_values=255) for t in row]
        tiles.append(np.concatenate(row, axis=1))
    width = max(t.shape[1] for t in tiles)
    tiles = [np.pad(t, ((0, 6), (0, width - t.shape[1]), (0, 0)), constant_values=255) for t in tiles]
    return Image.fromarray(np.concatenate(tiles, axis=0))


def _framed(img: np.ndarray, colour: tuple[int, int, int], border: int) -> np.ndarray:
    out = Image.fromarray(img)
    framed = Image.new("RGB", (out.width + 2 * border, out.height + 2 * border), colour)
    framed.paste(out, (border, border))
    return np.array(framed)


def recall_curve(ranks: torch.Tensor, max_n: int, path: Path, title: str = "Recall@N") -> None:
    """Plot Recall@N for N = 1..max_n from first-positive ranks and save it as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = list(range(1, max_n + 1))
    values = [(ranks <= n).float().mean().item() * 100 for n in ns]
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=100)
    ax.plot(ns, values, marker="o", markersize=3)
    ax.set_xlabel("N")
    ax.set_ylabel("Recall@N (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def _save_atomic(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp)


def _log_image(logger: Any, key: str, path: Path, step: int) -> None:
    name = type(logger).__name__
    if name == "WandbLogger":
        logger.log_image(key=key, images=[str(path)], step=step)
    elif name == "TensorBoardLogger":
        logger.experiment.add_image(key, np.array(Image.open(path).convert("RGB")), step, dataformats="HWC")
