"""StructVPR's sample weighting: partition training queries by teacher and student ranks."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch

from structvpr.callbacks._access import datamodule_of
from structvpr.metrics.recall import first_positive_rank

NOISY, TEACHABLE, CONSISTENT = 0, 1, 2
GROUP_NAMES = ("noisy", "teachable", "consistent")


def partition(teacher_ranks: torch.Tensor, student_ranks: torch.Tensor, tau: int) -> torch.Tensor:
    """Group of every query: 0 noisy (``r_T > tau``), 1 teachable (``r_S > r_T``), 2 consistent."""
    groups = torch.where(student_ranks > teacher_ranks, TEACHABLE, CONSISTENT)
    return torch.where(teacher_ranks > tau, NOISY, groups)


def sample_weights(teacher_ranks: torch.Tensor, student_ranks: torch.Tensor, tau: int = 5,
                   alpha: float = 1.0) -> torch.Tensor:  # fmt: skip
    """``w = sigmoid(alpha * (ln r_S - ln r_T))`` for teachable and consistent queries, 0 for noisy.

    Args:
        teacher_ranks: ``(Q,)`` 1-based rank of the first positive for the teacher.
        student_ranks: ``(Q,)`` the same for the student.
        tau: Teacher ranks above ``tau`` make a query noisy.
        alpha: Sharpness.

    Returns:
        ``(Q,)`` float32 weights in [0, 1].

    """
    r_t, r_s = teacher_ranks.double(), student_ranks.double()
    w = torch.sigmoid(alpha * (r_s.log() - r_t.log()))
    return torch.where(partition(teacher_ranks, student_ranks, tau) == NOISY, 0.0, w).float()


def mean_one(weights: torch.Tensor) -> torch.Tensor:
    """``weights`` rescaled to mean 1 (all zeros stay zeros)."""
    total = weights.sum()
    return weights * (len(weights) / total) if total > 0 else weights


class SampleWeighting(pl.Callback):
    """Sets the distillation weight of every training query at the start of each epoch (DESIGN 1.4).

    ``r_T`` (the teacher's rank of the first positive, retrieving over the training
    database) is computed once; ``r_S`` uses the student's descriptors of the epoch, which
    hard-negative mining shares. Ranks beyond ``max_rank`` count as ``max_rank + 1``.
    Weights are computed on rank 0 and broadcast, so every process trains with the same
    ones. Group sizes, mean weight per group and a weight histogram are logged.

    Args:
        tau: Teacher rank above which a query is noisy (weight 0).
        alpha: Sharpness of ``sigmoid(alpha * (ln r_S - ln r_T))``.
        max_rank: Search depth for the ranks.
        query_fraction: Fraction of training queries whose ``r_S`` is refreshed per epoch
            (the rest keep their weights), for very large training sets.
        every_n_epochs: Refresh period.
        radius: Metres within which a database image is a true positive.
        seed: Seed of the query subsets.
        uniform: Ablation: compute and log the groups, but train with every weight 1.
        normalize: Rescale the weights to mean 1 over the training queries, so that the
            total distillation signal equals uniform distillation at the same lambda and
            the weighting only redistributes it (noisy queries keep 0).

    """

    def __init__(self, tau: int = 5, alpha: float = 1.0, max_rank: int = 100, query_fraction: float = 1.0,
                 every_n_epochs: int = 1, radius: float = 25.0, seed: int = 0, uniform: bool = False,
                 normalize: bool = False) -> None:  # fmt: skip
        if tau < 1:
            raise ValueError(f"tau must be >= 1, got {tau}")
        if max_rank < tau:
            raise ValueError(f"max_rank must be >= tau, got max_rank={max_rank}, tau={tau}")
        if not 0 < query_fraction <= 1:
            raise ValueError(f"query_fraction must lie in (0, 1], got {query_fraction}")
        if every_n_epochs < 1 or radius <= 0:
            raise ValueError(f"need every_n_epochs >= 1 and radius > 0, got {every_n_epochs}, {radius}")
        self.tau, self.alpha, self.max_rank = tau, alpha, max_rank
        self.query_fraction, self.every_n_epochs, self.radius, self.seed = query_fraction, every_n_epochs, radius, seed
        if uniform and normalize:
            raise ValueError("uniform and normalize exclude each other")
        self.uniform, self.normalize = uniform, normalize
        self.teacher_ranks: torch.Tensor | None = None
        self.student_ranks: torch.Tensor | None = None
        self.weights: torch.Tensor | None = None
        self.last_stats: dict[str, float] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        for needed in ("set_sample_weights", "teacher_training_descriptors", "training_descriptors"):
            if not hasattr(pl_module, needed):
                raise TypeError(f"SampleWeighting needs a distillation task with {needed}(), got {type(pl_module).__name__}")

    def _ranks(self, descriptors: Any, dataset: Any, queries: np.ndarray) -> torch.Tensor:
        """Ranks of training ``queries``; ``descriptors(ids)`` gives the descriptors of bank ids."""
        bank = dataset.bank
        q_ids = dataset.query_image_index(queries)
        n_db = bank.num_database
        desc = descriptors(np.concatenate([np.arange(n_db), q_ids])).cpu()  # the whole database: ranks are global
        ranks, _ = first_positive_rank(desc[n_db:], desc[:n_db], self.max_rank,
                                       query_utm=bank.utm[q_ids], database_utm=bank.utm[:n_db],
                                       radius=self.radius)  # fmt: skip
        return ranks

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.weights is not None:  # resume: the weights of the saved run until the next refresh
            cast(Any, pl_module).set_sample_weights(self.weights)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch % self.every_n_epochs and self.weights is not None:
            return
        dataset = datamodule_of(trainer).train_dataset
        n = len(dataset)
        if self.teacher_ranks is None:
            teacher = cast(Any, pl_module).teacher_training_descriptors()
            self.teacher_ranks = self._ranks(lambda ids: teacher[torch.from_numpy(ids)], dataset, np.arange(n))
        if self.student_ranks is None:
            self.student_ranks = torch.full((n,), self.max_rank + 1, dtype=torch.long)
            chosen = np.arange(n)
        else:
            rng = np.random.default_rng([self.seed, trainer.current_epoch])
            chosen = np.sort(rng.choice(n, max(1, round(self.query_fraction * n)), replace=False))
        self.student_ranks[chosen] = self._ranks(cast(Any, pl_module).training_descriptors, dataset, chosen)
        weights = sample_weights(self.teacher_ranks, self.student_ranks, self.tau, self.alpha)
        if self.uniform:
            weights = torch.ones_like(weights)
        elif self.normalize:
            weights = mean_one(weights)
        self.weights = trainer.strategy.broadcast(weights, src=0)
        cast(Any, pl_module).set_sample_weights(self.weights)
        self._log(trainer)

    def _log(self, trainer: pl.Trainer) -> None:
        assert self.teacher_ranks is not None and self.student_ranks is not None and self.weights is not None
        groups = partition(self.teacher_ranks, self.student_ranks, self.tau)
        stats: dict[str, float] = {}
        for g, name in enumerate(GROUP_NAMES):
            members = groups == g
            stats[f"weighting/{name}_count"] = float(members.sum())
            stats[f"weighting/{name}_mean_weight"] = float(self.weights[members].mean()) if members.any() else 0.0
        stats["weighting/mean_weight"] = float(self.weights.mean())
        self.last_stats = stats
        for logger in trainer.loggers:
            logger.log_metrics(stats, step=trainer.global_step)
            _log_histogram(logger, "weighting/weights", self.weights, trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"teacher_ranks": self.teacher_ranks, "student_ranks": self.student_ranks, "weights": self.weights}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.teacher_ranks = state_dict["teacher_ranks"]
        self.student_ranks = state_dict["student_ranks"]
        self.weights = state_dict["weights"]


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
