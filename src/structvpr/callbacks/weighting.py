"""StructVPR's sample weighting: partition training queries (or images) by teacher and student ranks."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch

from structvpr.metrics.recall import first_positive_rank
from structvpr.protocols import DistillationTask, ImageWeightedTask, TrainingData, TupleTable, datamodule_of
from structvpr.retrieval.search import Backend
from structvpr.utils.memory import check_memory

NOISY, TEACHABLE, CONSISTENT = 0, 1, 2
GROUP_NAMES = ("noisy", "teachable", "consistent")


def partition(teacher_ranks: torch.Tensor, student_ranks: torch.Tensor, tau: int) -> torch.Tensor:
    """Group of every query: 0 noisy (``r_T > tau``), 1 teachable (``r_S > r_T``), 2 consistent."""
    groups = torch.where(student_ranks > teacher_ranks, TEACHABLE, CONSISTENT)
    return torch.where(teacher_ranks > tau, NOISY, groups)


def sample_weights(teacher_ranks: torch.Tensor, student_ranks: torch.Tensor, tau: int = 5, alpha: float = 1.0) -> torch.Tensor:
    """``w = sigmoid(alpha * (ln r_S - ln r_T))`` for teachable and consistent queries, 0 for noisy.

    Args:
        teacher_ranks: ``(Q,)`` 1-based rank of the first positive for the teacher.
        student_ranks: ``(Q,)`` the same for the student.
        tau: Teacher ranks above ``tau`` make a query noisy.
        alpha: Sharpness.

    Returns:
        ``(Q,)`` float32 weights in [0, 1] (before any rescaling to mean 1).

    """
    r_t, r_s = teacher_ranks.double(), student_ranks.double()
    w = torch.sigmoid(alpha * (r_s.log() - r_t.log()))
    return torch.where(partition(teacher_ranks, student_ranks, tau) == NOISY, 0.0, w).float()


def mean_one(weights: torch.Tensor) -> torch.Tensor:
    """``weights`` rescaled to mean 1 (all zeros stay zeros)."""
    total = weights.sum()
    return weights * (len(weights) / total) if total > 0 else weights


class SampleWeighting(pl.Callback):
    """Sets the distillation weight of each sub-epoch's training queries (DESIGN 1.4).

    For every query of the sub-epoch, ``r_T`` and ``r_S`` are the ranks of its first true
    positive (within ``radius``) when the teacher (label maps) and the current student
    (RGB) retrieve; ranks beyond ``max_rank`` count as ``max_rank + 1``. Which database they
    retrieve over is ``ranks``:

    - ``subepoch`` (default, any dataset size): the database images the sub-epoch already
      encodes for mining (its queries' GPS positives and the sampled negative pool), so the
      weighting adds no student encoding pass and one teacher pass over the same set;
      nothing scales with the training set. This set holds every positive within the
      positive radius and a random sample of the rest, so a rank here estimates the
      global one with the distractors thinned out by ``pool / database``: ranks are
      smaller, but teacher and student are compared on the same set, which is what the
      partition uses (see the README for a measured comparison).
    - ``global``: the whole training database, as in the paper: ``r_T`` is computed once
      (the teacher is frozen), ``r_S`` for the sub-epoch's queries with the student's
      descriptors of the whole database, every sub-epoch. For small training sets
      (Pittsburgh 30k); the teacher's descriptors of every training image must fit in
      memory (checked up front, for all processes on the host).

    Weights are computed identically on every process and broadcast from rank 0. Group
    sizes, mean weight per group and a histogram of the sub-epoch are logged, with
    ``weighting/global_ranks`` saying which rank set ran. The weights live in the task
    (``sample_weights``, saved with its state dict); this callback computes them and keeps the
    ranks, and every sub-epoch's queries, ranks and weights in :attr:`history` for analysis.

    ``unit`` says what a weight belongs to. ``query`` (the paper's form) weights a tuple's
    whole distillation term by its query's weight. ``image`` weights every image of the
    sub-epoch's tuples by its own ranks, so that a corrupted *database* label map (a tuple
    holds one query and ``1 + M`` database images) can be reached too: each image of the
    tuples is ranked as a query over the sub-epoch's database set without itself, its
    positives being the other database images within ``radius``; the weights go to the
    task's ``set_image_weights`` (needs ``ranks='subepoch'`` and no ``crossfit_teachers``:
    the fold teachers share every database image). A query's per-image ranks equal its
    per-query ones.

    A teacher ranks its own training queries almost always at 1 (it has learned exactly those
    label maps, corrupted ones included), so ``r_T`` then says little about whether its
    knowledge of a query is sound. ``crossfit_teachers`` takes ``r_T`` from teachers that never
    trained on the query instead: the training queries are split into ``K`` folds
    (:func:`~structvpr.data.datasets.query_fold`), teacher ``k`` is trained with
    ``data.held_out_fold=k, data.query_folds=K``, and ranks the queries of fold ``k``. The
    distillation targets still come from the task's own teacher.

    Args:
        tau: Teacher rank above which a query is noisy (weight 0).
        alpha: Sharpness of ``sigmoid(alpha * (ln r_S - ln r_T))``.
        max_rank: Search depth for the ranks.
        ranks: ``subepoch`` or ``global`` (see above).
        radius: Metres within which a database image is a true positive.
        uniform: Ablation: compute and log the groups, but train with every weight 1.
        normalize: Rescale each sub-epoch's weights to mean 1 (noisy queries keep 0), so
            that StructVPR weights and uniform weights distil the same total at the same
            ``distill_weight`` and the comparison is between choices, not amounts. Without
            it the weighted run distils ``mean(w)`` times less than the uniform one.
        crossfit_teachers: Checkpoints of ``K`` SegTeachers, the ``k``-th trained without fold
            ``k`` of the training queries (see above); None: the task's teacher ranks.
        unit: ``query`` (one weight per tuple, from its query) or ``image`` (one weight per
            image of the tuple; see above).

    """

    def __init__(
        self,
        tau: int = 5,
        alpha: float = 1.0,
        max_rank: int = 100,
        ranks: Literal["subepoch", "global"] = "subepoch",
        radius: float = 25.0,
        uniform: bool = False,
        normalize: bool = True,
        crossfit_teachers: list[str] | None = None,
        unit: Literal["query", "image"] = "query",
    ) -> None:
        if tau < 1:
            raise ValueError(f"tau must be >= 1, got {tau}")
        if max_rank < tau:
            raise ValueError(f"max_rank must be >= tau, got max_rank={max_rank}, tau={tau}")
        if ranks not in ("subepoch", "global"):
            raise ValueError(f"ranks must be 'subepoch' or 'global', got {ranks!r}")
        if radius <= 0:
            raise ValueError(f"radius must be > 0, got {radius}")
        self.tau, self.alpha, self.max_rank, self.ranks, self.radius = tau, alpha, max_rank, ranks, radius
        if crossfit_teachers is not None and len(crossfit_teachers) < 2:
            raise ValueError(f"crossfit_teachers needs at least 2 checkpoints (one per fold), got {crossfit_teachers}")
        if unit not in ("query", "image"):
            raise ValueError(f"unit must be 'query' or 'image', got {unit!r}")
        if unit == "image" and (ranks != "subepoch" or crossfit_teachers is not None):
            raise ValueError(
                "unit='image' ranks every image over the sub-epoch's database set: it needs "
                "ranks='subepoch' and no crossfit_teachers"
            )
        self.unit = unit
        self.uniform, self.normalize = uniform, normalize
        self.crossfit_teachers = list(crossfit_teachers) if crossfit_teachers is not None else None
        #: Per weighted sub-epoch: ``subepoch``, ``queries`` (training-query indices), ``image_ids``
        #: (the bank ids weighted: the queries', or with ``unit='image'`` every image of the
        #: tuples), ``teacher_ranks``, ``student_ranks`` and ``weights`` (numpy arrays, one per id).
        #: Kept in memory for analysis, not in checkpoints.
        self.history: list[dict[str, Any]] = []
        self._fold_teachers: list[Any] = []
        #: Ranks of every training query (``unit='image'``: every bank image) when it was last
        #: weighted (logging and state).
        self.teacher_ranks: torch.Tensor | None = None
        self.student_ranks: torch.Tensor | None = None
        self.subepoch = -1
        self.last_stats: dict[str, float] = {}
        self._global_teacher_ranks: torch.Tensor | None = None
        self._data: TrainingData | None = None
        self._task: DistillationTask | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        data = datamodule_of(trainer)
        if not isinstance(pl_module, DistillationTask) or not {"student", "teacher"} <= set(pl_module.banks):
            raise TypeError(
                f"SampleWeighting needs a task satisfying structvpr.protocols.DistillationTask "
                f"(banks['student'], banks['teacher'], set_sample_weights), "
                f"got {type(pl_module).__name__}"
            )
        if not isinstance(data, TrainingData):
            raise TypeError(
                f"SampleWeighting needs a datamodule satisfying structvpr.protocols.TrainingData, got {type(data).__name__}"
            )
        from structvpr.callbacks.mining import HardNegativeMining

        callbacks = list(getattr(trainer, "callbacks", []))
        names = [type(c).__name__ for c in callbacks]
        miners = [i for i, c in enumerate(callbacks) if isinstance(c, HardNegativeMining)]
        if not miners or miners[0] > callbacks.index(self):
            raise ValueError(
                "SampleWeighting ranks each sub-epoch's mined set: put HardNegativeMining before it "
                f"in trainer.callbacks (now: {names})"
            )
        if self.unit == "image" and not isinstance(pl_module, ImageWeightedTask):
            raise TypeError(
                f"SampleWeighting(unit='image') needs a task satisfying structvpr.protocols."
                f"ImageWeightedTask (set_image_weights), got {type(pl_module).__name__}"
            )
        self._data, self._task = data, pl_module
        if self.crossfit_teachers is not None and not self._fold_teachers:
            from structvpr.tasks.teacher import SegTeacher

            for path in self.crossfit_teachers:
                teacher = SegTeacher.load_from_checkpoint(path, map_location=pl_module.device, weights_only=True)
                teacher.freeze()
                self._fold_teachers.append(teacher.encoder)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._data is None or self._task is None:
            raise RuntimeError("SampleWeighting.setup has not run")
        task, dataset = self._task, self._data.training_tuples
        if dataset.subepoch == self.subepoch:
            return  # resumed inside this sub-epoch: the task's weights came back with its state dict
        n = dataset.num_training_queries if self.unit == "query" else len(dataset.utm)
        if self.teacher_ranks is None or len(self.teacher_ranks) != n:
            self.teacher_ranks = torch.full((n,), self.max_rank + 1, dtype=torch.long)
            self.student_ranks = torch.full((n,), self.max_rank + 1, dtype=torch.long)
        assert self.student_ranks is not None
        queries = dataset.tuples[:, 0].numpy()
        q_ids = np.asarray(dataset.query_image_index(queries))
        backend: Backend = getattr(task, "hparams", {}).get("search_backend", "auto")
        exclude = None
        if self.ranks == "subepoch":
            database = dataset.subepoch_database
            if self.unit == "image":  # every image of the tuples, each ranked without itself
                q_ids = np.union1d(dataset.tuples[:, 1:].numpy().ravel(), q_ids)
                exclude = _positions(database, q_ids)
            r_t = self._teacher_ranks(task, database, q_ids, dataset, backend, exclude)
        else:
            database = np.arange(dataset.num_database)
            if self._global_teacher_ranks is None:
                self._global_teacher_ranks = self._global_teacher(task, dataset, backend, trainer)
            r_t = self._global_teacher_ranks[torch.from_numpy(queries)]
        r_s = self._ranks(task.banks["student"].descriptors, database, q_ids, dataset, backend, exclude)
        weights = sample_weights(r_t, r_s, self.tau, self.alpha)
        if self.uniform:
            weights = torch.ones_like(weights)
        elif self.normalize:
            weights = mean_one(weights)
        chosen = torch.from_numpy(queries if self.unit == "query" else q_ids)
        self.teacher_ranks[chosen], self.student_ranks[chosen] = r_t, r_s
        weights = trainer.strategy.broadcast(weights, src=0)
        if isinstance(task, ImageWeightedTask) and self.unit == "image":
            task.set_image_weights(chosen, weights)
        else:
            task.set_sample_weights(chosen, weights)
        self.subepoch = dataset.subepoch
        self.history.append(
            {
                "subepoch": self.subepoch,
                "queries": queries.copy(),
                "image_ids": np.asarray(q_ids),
                "teacher_ranks": r_t.numpy(),
                "student_ranks": r_s.numpy(),
                "weights": weights.cpu().numpy(),
            }
        )
        self._log(trainer, r_t, r_s, weights.cpu(), len(database))

    def _ranks(
        self,
        descriptors: Any,
        database: np.ndarray,
        q_ids: np.ndarray,
        dataset: TupleTable,
        backend: Backend,
        exclude: np.ndarray | None = None,
    ) -> torch.Tensor:
        """Ranks of the queries ``q_ids`` over ``database`` (bank ids); ``descriptors(ids)`` encodes.

        ``exclude``: per query, a position in ``database`` left out of its list (``-1``: none).
        """
        desc = descriptors(np.concatenate([database, q_ids]))  # one request, one pass
        utm = dataset.utm
        ranks, _ = first_positive_rank(
            desc[len(database) :],
            desc[: len(database)],
            self.max_rank,
            query_utm=utm[q_ids],
            database_utm=utm[database],
            radius=self.radius,
            backend=backend,
            exclude=exclude,
        )
        return ranks.cpu()

    def _teacher_ranks(
        self,
        task: DistillationTask,
        database: np.ndarray,
        q_ids: np.ndarray,
        dataset: TupleTable,
        backend: Backend,
        exclude: np.ndarray | None = None,
    ) -> torch.Tensor:
        """``r_T`` of the queries ``q_ids`` over ``database``: the task's teacher, or each query's fold teacher."""
        if not self._fold_teachers:
            return self._ranks(task.banks["teacher"].descriptors, database, q_ids, dataset, backend, exclude)
        from structvpr.data.datasets import query_fold

        encode = task.banks["teacher"].encode  # the bank's sharded pass, with each fold's teacher
        folds = query_fold(np.asarray(q_ids) - dataset.num_database, len(self._fold_teachers))
        ranks = torch.empty(len(q_ids), dtype=torch.long)
        for k, encoder in enumerate(self._fold_teachers):
            members = np.flatnonzero(folds == k)
            if len(members):
                encoder.to(getattr(task, "device", "cpu"))
                fold_ranks = self._ranks(
                    lambda ids, e=encoder: encode(ids, e), database, np.asarray(q_ids)[members], dataset, backend
                )
                ranks[torch.from_numpy(members)] = fold_ranks
        return ranks

    def _global_teacher(self, task: DistillationTask, dataset: TupleTable, backend: Backend, trainer: pl.Trainer) -> torch.Tensor:
        """``r_T`` of every training query over the whole training database (once: the teacher is frozen)."""
        n_db = dataset.num_database
        q_ids = dataset.query_image_index(np.arange(dataset.num_training_queries))
        ids = np.concatenate([np.arange(n_db), q_ids])
        dim = task.banks["teacher"].dim
        check_memory(
            len(ids) * dim * 4,
            torch.device(getattr(task, "device", "cpu")),
            trainer,
            "teacher descriptors of every training image (SampleWeighting(ranks='global'))",
            "use SampleWeighting(ranks='subepoch'), which ranks over each sub-epoch's encoded set",
        )
        if self._fold_teachers:
            return self._teacher_ranks(task, np.arange(n_db), q_ids, dataset, backend)
        desc = task.banks["teacher"].encode(ids)
        utm = dataset.utm
        ranks, _ = first_positive_rank(
            desc[n_db:],
            desc[:n_db],
            self.max_rank,
            query_utm=utm[q_ids],
            database_utm=utm[:n_db],
            radius=self.radius,
            backend=backend,
        )
        return ranks.cpu()

    def _log(self, trainer: pl.Trainer, r_t: torch.Tensor, r_s: torch.Tensor, w: torch.Tensor, database_size: int) -> None:
        extra = {"per_image": float(self.unit == "image"), "global_ranks": float(self.ranks == "global")}
        self.last_stats = log_weighting(trainer, r_t, r_s, w, self.tau, database_size, extra)

    def state_dict(self) -> dict[str, Any]:
        return {
            "teacher_ranks": self.teacher_ranks,
            "student_ranks": self.student_ranks,
            "subepoch": self.subepoch,
            "global_teacher_ranks": self._global_teacher_ranks,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.teacher_ranks = state_dict["teacher_ranks"]
        self.student_ranks = state_dict["student_ranks"]
        self.subepoch = state_dict.get("subepoch", -1)
        self._global_teacher_ranks = state_dict.get("global_teacher_ranks")


def log_weighting(
    trainer: pl.Trainer,
    r_t: torch.Tensor,
    r_s: torch.Tensor,
    w: torch.Tensor,
    tau: int,
    database_size: int,
    extra: dict[str, float] | None = None,
) -> dict[str, float]:
    """Log group sizes, mean weight per group, the mean weight and a histogram of ``w``; returns the scalars.

    Every weighting (per sub-epoch of tuples, per window of place batches) logs the same names:
    ``weighting/{noisy,teachable,consistent}_{count,mean_weight}``, ``weighting/mean_weight``,
    ``weighting/rank_database_size``, the ``extra`` ones and ``weighting/weights`` (histogram).
    """
    groups = partition(r_t, r_s, tau)
    stats: dict[str, float] = {}
    for g, name in enumerate(GROUP_NAMES):
        members = groups == g
        stats[f"weighting/{name}_count"] = float(members.sum())
        stats[f"weighting/{name}_mean_weight"] = float(w[members].mean()) if members.any() else 0.0
    stats["weighting/mean_weight"] = float(w.mean())
    stats.update({f"weighting/{k}": v for k, v in (extra or {}).items()})
    stats["weighting/rank_database_size"] = float(database_size)
    for logger in trainer.loggers:
        logger.log_metrics(stats, step=trainer.global_step)
        _log_histogram(logger, "weighting/weights", w, trainer.global_step)
    return stats


def _positions(database: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Position of each of ``ids`` in ``database`` (bank ids), ``-1`` where it is not there."""
    if len(database) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    order = np.argsort(database, kind="stable")
    found = np.searchsorted(database[order], ids).clip(max=len(database) - 1)
    return np.where(database[order][found] == ids, order[found], -1).astype(np.int64)


def _log_histogram(logger: Any, name: str, values: torch.Tensor, step: int) -> None:
    """Histogram to TensorBoard or wandb; other loggers get the bin counts as scalars."""
    experiment: Any = getattr(logger, "experiment", None)
    if hasattr(experiment, "add_histogram"):
        experiment.add_histogram(name, values, step)
        return
    if type(logger).__name__ == "WandbLogger":
        import wandb

        experiment.log({name: wandb.Histogram(values.tolist()), "trainer/global_step": step})
        return
    counts = torch.histc(values.float(), bins=10, min=0, max=1)
    logger.log_metrics({f"{name}_bin{i}": float(c) for i, c in enumerate(counts)}, step=step)
