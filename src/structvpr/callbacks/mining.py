"""Sub-epochs of mined tuples: descriptor-nearest positives and hardest negatives (NetVLAD, MSLS, VG)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info

from structvpr.protocols import DescriptorTask, TrainingData, TupleTable, datamodule_of
from structvpr.retrieval.search import Backend, knn


class HardNegativeMining(pl.Callback):
    """Before every sub-epoch (one Lightning epoch), mine the tuples it trains on, with the current model.

    As in the MSLS and VG-benchmark references, sub-epoch ``k`` takes its
    ``cache_queries`` training queries (see :class:`~structvpr.data.datasets.TripletDataset`),
    encodes them, all their GPS positives (within the positive radius) and a random pool of
    ``cache_negatives`` database images, and gives each query

    - the GPS positive nearest in descriptor space (``positive="nearest"``, the NetVLAD,
      MSLS and VG-benchmark rule; ``"random"`` draws one), and
    - its ``M`` nearest pool images that lie beyond the negative radius (hardest first).

    Only the sub-epoch's tuples train, so no query trains on stale or random negatives. A
    query with fewer than ``M`` valid negatives in the pool (a pool mostly within its
    radius) gets random ones for the missing places; their count is logged. Search runs on
    the model's device through :func:`structvpr.retrieval.search.knn`. The encoding is the
    task's student bank (``task.banks['student']``, a :class:`~structvpr.bank.DescriptorBank`), which
    :class:`~structvpr.callbacks.SampleWeighting` reuses; under DDP each process encodes its
    share and the tuples are broadcast from rank 0.

    The first sub-epoch of a run is mined in ``on_fit_start``, before Lightning builds the
    epoch's data iterator (whose workers start reading the table at once); later ones in
    ``on_train_epoch_start``. The table is saved in checkpoints: a run resumed mid-sub-epoch
    finishes it on the same tuples, one resumed at a sub-epoch's end mines the next.

    Departures from the references: negatives come from a fresh random pool only (NetVLAD
    also keeps each query's previous hard negatives in the pool), and a tuple whose
    negatives all satisfy the margin still trains (NetVLAD drops it; its loss is zero).

    Args:
        cache_negatives: Database images drawn as the negative pool of each sub-epoch
            (None: the whole database). The references use 1,000.
        positive: ``nearest`` (descriptor-nearest GPS positive) or ``random``.
        search_backend: Search for negatives (None: the task's ``search_backend``).
        descriptor_dtype: Storage of the sub-epoch's descriptors (student and teacher):
            ``float16`` halves their memory; search and losses still compute in float32.
        descriptor_memmap_dir: Keep the sub-epoch's descriptors in memory-mapped files in this
            folder (deleted when no longer used) instead of host or device memory, for sets that
            do not fit; search then runs on the CPU with the ``torch`` backend's blocks.
        seed: Seed of the negative pools.

    """

    def __init__(
        self,
        cache_negatives: int | None = 1000,
        positive: Literal["nearest", "random"] = "nearest",
        search_backend: Backend | None = None,
        descriptor_dtype: Literal["float32", "float16"] = "float32",
        descriptor_memmap_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        if cache_negatives is not None and cache_negatives < 1:
            raise ValueError(f"cache_negatives must be >= 1 or None, got {cache_negatives}")
        if positive not in ("nearest", "random"):
            raise ValueError(f"positive must be 'nearest' or 'random', got {positive!r}")
        self.cache_negatives, self.positive, self.seed = cache_negatives, positive, seed
        if descriptor_dtype not in ("float32", "float16"):
            raise ValueError(f"descriptor_dtype must be 'float32' or 'float16', got {descriptor_dtype!r}")
        self.search_backend, self.descriptor_dtype = search_backend, descriptor_dtype
        self.descriptor_memmap_dir = descriptor_memmap_dir
        self.refreshes = 0
        self.random_fills = 0
        self._restored: dict[str, Any] | None = None
        self._batches = 0
        self._trainer: pl.Trainer | None = None
        self._data: TrainingData | None = None
        self._task: DescriptorTask | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        data = datamodule_of(trainer)
        if not isinstance(data, TrainingData):
            raise TypeError(
                f"HardNegativeMining needs a datamodule satisfying structvpr.protocols.TrainingData "
                f"(training_tuples, train_images_dataloader), got {type(data).__name__}"
            )
        if not isinstance(pl_module, DescriptorTask) or "student" not in pl_module.banks:
            raise TypeError(
                f"HardNegativeMining needs a task satisfying structvpr.protocols.DescriptorTask "
                f"(banks['student']), got {type(pl_module).__name__}"
            )
        self._data, self._task, self._trainer = data, pl_module, trainer
        for bank in pl_module.banks.values():  # every sub-epoch array the task holds: teacher targets too
            bank.set_storage(getattr(torch, self.descriptor_dtype), self.descriptor_memmap_dir)

    @property
    def _tuples(self) -> TupleTable:
        if self._data is None:
            raise RuntimeError("HardNegativeMining.setup has not run")
        return self._data.training_tuples

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dataset = self._tuples
        saved, self._restored = self._restored, None
        if saved is None:  # a new run
            self.mine(trainer, 0)
        elif not saved["finished"]:  # resumed inside a sub-epoch: finish it on its own tuples
            table = saved["tuples"]
            dataset.set_tuples(
                saved["subepoch"],
                table[:, 0].numpy(),
                table[:, 1].numpy(),
                table[:, 2:].numpy(),
                database=saved["database"].numpy(),
            )
            self._batches = saved["batches"]
        else:  # resumed at a sub-epoch's end: the next one, mined with the restored weights
            self.mine(trainer, saved["subepoch"] + 1)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dataset = self._tuples
        if trainer.current_epoch > 0 and not (dataset.subepoch == trainer.current_epoch and dataset.mined):
            self.mine(trainer, trainer.current_epoch)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batches += 1

    def mine(self, trainer: pl.Trainer, k: int) -> None:
        """Mine and install the tuples of sub-epoch ``k``."""
        if self._task is None:
            raise RuntimeError("HardNegativeMining.setup has not run")
        dataset = self._tuples
        queries = dataset.subepoch_queries(k)
        n_db = dataset.num_database
        rng = np.random.default_rng([self.seed, k])
        if self.cache_negatives is None or self.cache_negatives >= n_db:
            pool = np.arange(n_db)
        else:
            pool = np.sort(rng.choice(n_db, self.cache_negatives, replace=False))
        gps_positives = [dataset.positives[q] for q in queries]
        database = np.union1d(np.concatenate(gps_positives), pool)
        # One request, one encoding pass: database ids < query ids, so rows stay in this order.
        desc = self._task.banks["student"].descriptors(np.concatenate([database, dataset.query_image_index(queries)]))
        db_desc, q_desc = desc[: len(database)], desc[len(database) :]
        if self.positive == "nearest":
            positives = nearest_positive(q_desc, db_desc, database, list(gps_positives))
        else:
            positives = np.array([rng.choice(p) for p in gps_positives], dtype=np.int64)
        backend: Backend = self.search_backend or getattr(self._task, "hparams", {}).get("search_backend", "auto")
        pool_rows = np.searchsorted(database, pool)
        negatives = mine_hardest(
            q_desc,
            db_desc[torch.from_numpy(pool_rows).to(db_desc.device)],
            pool,
            [dataset.non_negatives[q] for q in queries],
            dataset.num_negatives,
            backend=backend,
        ).numpy()
        short = np.flatnonzero((negatives < 0).any(1))
        for row in short:  # too few valid negatives in the pool: random ones fill the gaps
            fill = [c for c in dataset.random_negatives(int(queries[row]), rng) if c not in negatives[row]]
            gaps = np.flatnonzero(negatives[row] < 0)
            negatives[row, gaps] = fill[: len(gaps)]
        table = torch.from_numpy(np.concatenate([positives[:, None], negatives], 1))
        table = trainer.strategy.broadcast(table, src=0)
        dataset.set_tuples(k, queries, table[:, 0].numpy(), table[:, 1:].numpy(), database=database)
        self.refreshes += 1
        self.random_fills += len(short)
        self._batches = 0
        if k == 0:
            rank_zero_info(
                f"HardNegativeMining: sub-epochs of {len(queries)} queries, {len(pool)} pool images, "
                f"{len(database)} database images encoded per sub-epoch"
            )
        for logger in trainer.loggers:
            logger.log_metrics(
                {"mining/encoded_database": float(len(database)), "mining/random_filled_queries": float(len(short))},
                step=trainer.global_step,
            )

    def state_dict(self) -> dict[str, Any]:
        if self._data is None or self._trainer is None or self._tuples.subepoch < 0:
            return {"refreshes": self.refreshes}
        dataset = self._tuples
        return {
            "refreshes": self.refreshes,
            "subepoch": dataset.subepoch,
            "tuples": dataset.tuples.clone(),
            "database": torch.from_numpy(dataset.subepoch_database.copy()),
            "batches": self._batches,
            "finished": self._batches >= self._trainer.num_training_batches,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.refreshes = state_dict["refreshes"]
        if "tuples" in state_dict:
            self._restored = dict(state_dict)


def nearest_positive(
    queries: torch.Tensor, database: torch.Tensor, database_ids: np.ndarray, gps_positives: list[np.ndarray], chunk: int = 65536
) -> np.ndarray:
    """Each query's GPS positive nearest in descriptor space (ties: the lower id).

    Args:
        queries: ``(Q, D)`` query descriptors.
        database: ``(N, D)`` descriptors of the sorted database ids ``database_ids``.
        database_ids: ``(N,)`` sorted database ids, holding every GPS positive.
        gps_positives: Per query, its candidate database ids (sorted, non-empty).
        chunk: (query, positive) pairs per distance block.

    Returns:
        ``(Q,)`` int64 database ids.

    """
    counts = np.array([len(p) for p in gps_positives])
    if (counts == 0).any():
        raise ValueError("every query needs at least one GPS positive")
    flat = np.concatenate(gps_positives)
    owner = np.repeat(np.arange(len(counts)), counts)
    rows = torch.from_numpy(np.searchsorted(database_ids, flat)).to(database.device)
    owner_t = torch.from_numpy(owner).to(queries.device)
    dist = (
        torch.cat(
            [
                (queries[owner_t[i : i + chunk]].float() - database[rows[i : i + chunk]].float()).pow(2).sum(1)
                for i in range(0, len(flat), chunk)
            ]
        )
        .cpu()
        .numpy()
    )
    order = np.lexsort((flat, dist, owner))  # per query: nearest first, then lower id
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return flat[order[starts]]


def mine_hardest(
    queries: torch.Tensor,
    pool: torch.Tensor,
    pool_ids: np.ndarray,
    non_negatives: list[np.ndarray],
    m: int,
    backend: Backend = "auto",
) -> torch.Tensor:
    """The ``m`` nearest pool items of each query that are not among its non-negatives.

    One k-nearest-neighbour search (``k = m`` plus the most non-negatives any query has in
    the pool) and a vectorised filter; no full distance matrix.

    Args:
        queries: ``(Q, D)`` query descriptors.
        pool: ``(P, D)`` candidate descriptors.
        pool_ids: ``(P,)`` sorted database ids of the candidates.
        non_negatives: Per query, database ids that must not be negatives (within the radius).
        m: Negatives per query.
        backend: Search backend (see :func:`~structvpr.retrieval.search.knn`).

    Returns:
        ``(Q, m)`` int64 database ids, hardest first; ``-1`` where fewer than ``m`` are valid.

    """
    num_q = len(non_negatives)
    counts = np.array([len(b) for b in non_negatives])
    banned = np.concatenate([*non_negatives, np.zeros(0, dtype=np.int64)]).astype(np.int64)
    owner = np.repeat(np.arange(num_q), counts)
    in_pool = np.isin(banned, pool_ids)
    depth = m + int(np.bincount(owner[in_pool], minlength=num_q).max(initial=0))
    idx = knn(queries, pool, depth, backend=backend).cpu().numpy()
    candidates = pool_ids[idx]  # (Q, min(depth, P))
    stride = int(max(pool_ids.max(initial=0), banned.max(initial=0))) + 1
    bad = np.isin(np.arange(num_q)[:, None] * stride + candidates, owner * stride + banned)
    order = np.argsort(bad, axis=1, kind="stable")[:, :m]  # valid first, each group in rank order
    out = np.full((num_q, m), -1, dtype=np.int64)
    chosen = np.take_along_axis(candidates, order, 1)
    valid = ~np.take_along_axis(bad, order, 1)
    out[:, : chosen.shape[1]] = np.where(valid, chosen, -1)
    return torch.from_numpy(out)
