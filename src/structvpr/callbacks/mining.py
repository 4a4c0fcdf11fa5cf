"""Hard-negative mining refreshed every epoch with the current model (NetVLAD style)."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch

from structvpr.callbacks._access import datamodule_of


class HardNegativeMining(pl.Callback):
    """At the start of every ``every_n_epochs`` epoch, give training queries their hardest negatives.

    A random fraction of training queries and a random pool of database images are encoded
    (only those: the task's per-epoch training descriptors, shared with sample weighting, so
    ``query_fraction`` and ``pool_size`` bound the cost on large sets such as MSLS); each chosen
    query keeps the M pool images nearest in descriptor space that lie beyond the negative
    radius. The new table is broadcast from rank 0 and written into the dataset's shared
    negative table, which DataLoader workers read.

    Args:
        query_fraction: Fraction of training queries refreshed each time.
        pool_size: Database images drawn as candidates (None: the whole database).
        every_n_epochs: Refresh period.
        seed: Seed of the random subsets.

    """

    def __init__(self, query_fraction: float = 1.0, pool_size: int | None = None, every_n_epochs: int = 1,
                 seed: int = 0) -> None:  # fmt: skip
        if not 0 < query_fraction <= 1:
            raise ValueError(f"query_fraction must lie in (0, 1], got {query_fraction}")
        if pool_size is not None and pool_size < 1:
            raise ValueError(f"pool_size must be >= 1 or None, got {pool_size}")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.query_fraction, self.pool_size = query_fraction, pool_size
        self.every_n_epochs, self.seed = every_n_epochs, seed
        self.refreshes = 0
        self._restored: torch.Tensor | None = None
        self._dataset: Any = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not hasattr(pl_module, "training_descriptors"):
            raise TypeError(f"HardNegativeMining needs a task with training_descriptors(), got {type(pl_module).__name__}")
        dataset = getattr(datamodule_of(trainer), "train_dataset", None)
        if dataset is None or not hasattr(dataset, "set_negatives"):
            raise TypeError("HardNegativeMining needs a datamodule whose train_dataset has set_negatives()")
        self._dataset = dataset

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restored is not None:  # resume: the mined table of the saved run
            datamodule_of(trainer).train_dataset.negatives.copy_(self._restored)
            self._restored = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch % self.every_n_epochs:
            return
        dataset = datamodule_of(trainer).train_dataset
        rng = np.random.default_rng([self.seed, trainer.current_epoch])
        n_q = len(dataset)
        queries = np.sort(rng.choice(n_q, max(1, round(self.query_fraction * n_q)), replace=False))
        n_db = dataset.bank.num_database
        pool = np.arange(n_db) if self.pool_size is None else np.sort(rng.choice(n_db, min(n_db, self.pool_size), replace=False))
        # Only the chosen queries and the pool are encoded (one request: one pass).
        q_ids = dataset.query_image_index(queries)
        wanted = np.concatenate([pool, q_ids])  # pool ids < n_db <= query ids: sorted, distinct
        desc = cast(Any, pl_module).training_descriptors(wanted)
        negatives = mine_hardest(desc[len(pool) :], desc[: len(pool)], pool,
                                 [dataset.non_negatives[i] for i in queries], dataset.num_negatives,
                                 [dataset.negatives[i].numpy() for i in queries])  # fmt: skip
        negatives = trainer.strategy.broadcast(negatives, src=0)
        dataset.set_negatives(torch.from_numpy(queries), negatives)
        self.refreshes += 1

    def state_dict(self) -> dict[str, Any]:
        table = None if self._dataset is None else self._dataset.negatives.clone()
        return {"refreshes": self.refreshes, "negatives": table}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.refreshes = state_dict["refreshes"]
        if state_dict.get("negatives") is not None:
            self._restored = state_dict["negatives"].clone()


def mine_hardest(queries: torch.Tensor, pool: torch.Tensor, pool_ids: np.ndarray, non_negatives: list[np.ndarray],
                 m: int, fallback: list[np.ndarray]) -> torch.Tensor:  # fmt: skip
    """The ``m`` nearest pool items of each query that are not among its non-negatives.

    Args:
        queries: ``(Q, D)`` query descriptors.
        pool: ``(P, D)`` candidate descriptors.
        pool_ids: ``(P,)`` database ids of the candidates.
        non_negatives: Per query, database ids that must not be negatives (within the radius).
        m: Negatives per query.
        fallback: Per query, the current negatives, kept when fewer than ``m`` candidates are valid.

    Returns:
        ``(Q, m)`` int64 database ids, hardest first.

    """
    dist = torch.cdist(queries.float(), pool.float())
    out = torch.empty(len(queries), m, dtype=torch.long)
    for i, banned in enumerate(non_negatives):
        d = dist[i].clone()
        d[torch.from_numpy(np.isin(pool_ids, banned))] = float("inf")
        order = torch.argsort(d)[:m]
        if torch.isinf(d[order]).any():
            out[i] = torch.from_numpy(np.asarray(fallback[i]))
        else:
            out[i] = torch.from_numpy(pool_ids[order.numpy()])
    return out
