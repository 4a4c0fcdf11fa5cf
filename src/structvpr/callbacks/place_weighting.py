"""StructVPR's per-image weights in place batches: teacher and student ranks over a window of upcoming batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from structvpr.callbacks.weighting import log_weighting, mean_one, sample_weights
from structvpr.data.places import place_fold
from structvpr.metrics.recall import first_positive_rank
from structvpr.retrieval.search import Backend, radius_neighbours


def window_positives(place: np.ndarray, utm: np.ndarray, radius: float) -> list[np.ndarray]:
    """Per image of a window, the other images that are true positives: the same place, or within ``radius``.

    Args:
        place: ``(N,)`` place of every image.
        utm: ``(N, 2)`` coordinates.
        radius: The correct-match radius in metres.

    Returns:
        One sorted array of window positions per image, never the image itself.

    """
    place = np.asarray(place)
    near = radius_neighbours(utm, utm, radius)
    out = []
    for i, hits in enumerate(near):
        same = np.flatnonzero(place == place[i])
        both = np.union1d(hits, same)
        out.append(both[both != i])
    return out


def window_ranks(desc: torch.Tensor, positives: Sequence[np.ndarray], max_rank: int, backend: Backend = "auto") -> torch.Tensor:
    """``(N,)`` 1-based rank of each image's first true positive when it queries the rest of the window.

    ``desc`` holds the ``(N, D)`` descriptors of the window's images; each image is left out of its
    own list. An image without a positive in the window, or whose first lies deeper than
    ``max_rank``, gets ``max_rank + 1``.
    """
    ranks, _ = first_positive_rank(desc, desc, max_rank, positives=list(positives), backend=backend, exclude=np.arange(len(desc)))
    return ranks.cpu()


def crossfit_ranks(
    encoders: Sequence[Callable[[np.ndarray], torch.Tensor]],
    folds: np.ndarray,
    positives: Sequence[np.ndarray],
    max_rank: int,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Teacher ranks cross-fitted by fold: image ``i`` is ranked with the teacher of its fold ``folds[i]``.

    Teacher ``k`` (``encoders[k](positions) -> (n, D)``, descriptors of the window's images at
    those positions) was trained without the places of fold ``k``, so no teacher ranks a place it
    trained on; every teacher retrieves over the whole window.
    """
    n = len(folds)
    ranks = torch.full((n,), max_rank + 1, dtype=torch.long)
    everything = np.arange(n)
    for k, encode in enumerate(encoders):
        members = np.flatnonzero(folds == k)
        if not len(members):
            continue
        desc = encode(everything)
        ranks[torch.from_numpy(members)] = window_ranks(desc, positives, max_rank, backend)[torch.from_numpy(members)]
    return ranks


class PlaceWeighting(pl.Callback):
    """Sets the distillation weight of every image of each window of place batches (StructVPR's weights).

    At the first step of every window of :class:`~structvpr.tasks.PlaceDistillation` (its
    ``bank_batches`` upcoming steps, the batches of every process), each image of the window
    queries the rest of the window: ``r_T`` is the rank of its first true positive (an image of
    the same place, or within ``radius``) by the frozen teacher's descriptors of the un-augmented
    label maps, ``r_S`` the same by the student's current descriptors of the un-augmented RGB.
    The weights are the triplet path's (:func:`~structvpr.callbacks.weighting.sample_weights`:
    0 for noisy images, ``r_T > tau``; ``sigmoid(alpha (ln r_S - ln r_T))`` otherwise), rescaled
    to mean 1 over the window by default, and go to the task's ``set_image_weights``; group sizes,
    mean weights and a histogram are logged under the same names as
    :class:`~structvpr.callbacks.SampleWeighting`'s.

    A teacher ranks the places it trained on almost always at 1 (it learned their label maps,
    corrupted ones too). ``crossfit_teachers`` takes ``r_T`` from teachers that never saw the image's
    place instead: the places are split into ``K`` folds (:func:`~structvpr.data.places.place_fold`),
    teacher ``k`` is trained with ``data.place_folds=K, data.held_out_place_fold=k`` on the same
    training set, ``place_size_m`` and ``images_per_place``, and ranks the images of fold-``k``
    places. The distillation targets still come from the task's own teacher.

    The cost per window is one student pass and one teacher pass (per fold teacher with
    ``crossfit_teachers``) over its images in eval mode; the teacher's is shared with the cached
    targets.

    Args:
        tau: Teacher rank above which an image is noisy (weight 0).
        alpha: Sharpness of ``sigmoid(alpha * (ln r_S - ln r_T))``.
        max_rank: Search depth for the ranks.
        radius: Metres within which another image is a true positive (besides its place's images).
        uniform: Ablation: compute and log the groups, but train with every weight 1.
        normalize: Rescale each window's weights to mean 1 (noisy images keep 0).
        crossfit_teachers: Checkpoints of ``K >= 2`` teachers, the ``k``-th trained without the
            places of fold ``k`` (see above); None: the task's teacher ranks.

    """

    def __init__(
        self,
        tau: int = 5,
        alpha: float = 1.0,
        max_rank: int = 100,
        radius: float = 25.0,
        uniform: bool = False,
        normalize: bool = True,
        crossfit_teachers: list[str] | None = None,
    ) -> None:
        if tau < 1:
            raise ValueError(f"tau must be >= 1, got {tau}")
        if max_rank < tau:
            raise ValueError(f"max_rank must be >= tau, got max_rank={max_rank}, tau={tau}")
        if radius <= 0:
            raise ValueError(f"radius must be > 0, got {radius}")
        if crossfit_teachers is not None and len(crossfit_teachers) < 2:
            raise ValueError(f"crossfit_teachers needs at least 2 checkpoints (one per fold), got {crossfit_teachers}")
        self.tau, self.alpha, self.max_rank, self.radius = tau, alpha, max_rank, radius
        self.uniform, self.normalize = uniform, normalize
        self.crossfit_teachers = list(crossfit_teachers) if crossfit_teachers is not None else None
        #: Per weighted window: ``epoch``, ``window``, ``image_ids``, ``teacher_ranks``,
        #: ``student_ranks`` and ``weights`` (numpy arrays, one per image). In memory, for analysis.
        self.history: list[dict[str, Any]] = []
        self.last_stats: dict[str, float] = {}
        self._fold_teachers: list[Any] = []
        self._task: Any = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        from structvpr.tasks.place_distill import PlaceDistillation

        if not isinstance(pl_module, PlaceDistillation):
            raise TypeError(
                "PlaceWeighting weights the images of place batches: it needs a PlaceDistillation, "
                f"got {type(pl_module).__name__}"
            )
        self._task = pl_module
        if self.crossfit_teachers is not None and not self._fold_teachers:
            from structvpr.tasks.place import PlaceTeacher

            for path in self.crossfit_teachers:
                teacher = PlaceTeacher.load_from_checkpoint(path, map_location=pl_module.device, weights_only=True)
                teacher.freeze()
                self._fold_teachers.append(teacher.encoder)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        task = self._task
        if task is None:
            raise RuntimeError("PlaceWeighting.setup has not run")
        window, ids, fresh = task.prepare_window(batch_idx)
        if not fresh:
            return
        dataset = task.datamodule.train_dataset
        place = dataset.place_of[ids]
        positives = window_positives(place, dataset.bank.utm[torch.from_numpy(ids)].numpy(), self.radius)
        backend: Backend = task.hparams.get("search_backend", "auto")
        bank = task.banks["teacher"]
        if self._fold_teachers:
            folds = place_fold(place, len(self._fold_teachers))
            encoders = [lambda pos, e=e: bank.encode(ids[pos], encoder=e.to(task.device)) for e in self._fold_teachers]
            r_t = crossfit_ranks(encoders, folds, positives, self.max_rank, backend)
        else:
            r_t = window_ranks(bank.descriptors(ids), positives, self.max_rank, backend)
        r_s = window_ranks(task.banks["student"].descriptors(ids), positives, self.max_rank, backend)
        weights = sample_weights(r_t, r_s, self.tau, self.alpha)
        if self.uniform:
            weights = torch.ones_like(weights)
        elif self.normalize:
            weights = mean_one(weights)
        weights = trainer.strategy.broadcast(weights, src=0)
        task.set_image_weights(torch.from_numpy(ids), weights)
        self.history.append(
            {
                "epoch": trainer.current_epoch,
                "window": window,
                "image_ids": ids.copy(),
                "teacher_ranks": r_t.numpy(),
                "student_ranks": r_s.numpy(),
                "weights": weights.cpu().numpy(),
            }
        )
        extra = {"per_image": 1.0, "crossfit": float(bool(self._fold_teachers))}
        self.last_stats = log_weighting(trainer, r_t, r_s, weights.cpu(), self.tau, len(ids), extra)
