"""The contracts between callbacks, tasks and datamodules: what mining, weighting and PCA use.

A datamodule of another project runs :class:`~structvpr.callbacks.HardNegativeMining` and
:class:`~structvpr.callbacks.SampleWeighting` by satisfying :class:`TrainingData`; a task by
satisfying :class:`DescriptorTask` (mining, PCA) or :class:`DistillationTask` (weighting).
Callbacks check them with ``isinstance`` in ``setup`` and then use nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class TupleTable(Protocol):
    """The training tuples of the current sub-epoch and the coordinate tables behind them.

    Image ids ``0 .. num_database - 1`` are database images, the rest queries; a training
    query ``q`` (``0 .. num_training_queries - 1``) is image ``query_image_index(q)``.
    :class:`~structvpr.data.datasets.TripletDataset` implements it.
    """

    num_negatives: int
    #: Per training query: database ids within the positive radius (sorted, non-empty).
    positives: Sequence[np.ndarray]
    #: Per training query: database ids within the negative radius (never negatives).
    non_negatives: Sequence[np.ndarray]
    #: ``(S, 2 + M)`` rows ``[training query, positive, negatives...]`` of the current sub-epoch.
    tuples: torch.Tensor
    #: The sub-epoch the table holds, and whether it was mined.
    subepoch: int
    mined: bool
    #: Database ids encoded for the current sub-epoch.
    subepoch_database: np.ndarray

    @property
    def num_training_queries(self) -> int: ...

    @property
    def num_database(self) -> int: ...

    @property
    def utm(self) -> torch.Tensor:
        """``(N, 2)`` coordinates of every image, database then queries."""
        ...

    def subepoch_queries(self, k: int) -> np.ndarray: ...

    def query_image_index(self, i: Any) -> Any: ...

    def random_negatives(self, i: int, rng: np.random.Generator) -> np.ndarray: ...

    def set_tuples(self, k: int, queries: np.ndarray, positives: Any, negatives: Any, mined: bool = True,
                   database: np.ndarray | None = None) -> None: ...  # fmt: skip


@runtime_checkable
class TrainingData(Protocol):
    """A datamodule that serves sub-epochs of tuples and encoding passes over its training images."""

    @property
    def training_tuples(self) -> TupleTable: ...

    def train_images_dataloader(self, ids: Sequence[int] | np.ndarray | None = None,
                                key: str = "image") -> Iterable[dict[str, Any]]: ...  # fmt: skip


@runtime_checkable
class DescriptorTask(Protocol):
    """A task that encodes training images on request (mining, PCA fitting)."""

    #: Storage type of the per-sub-epoch descriptors.
    encode_dtype: torch.dtype

    def training_descriptors(self, ids: Sequence[int] | np.ndarray) -> torch.Tensor:
        """``(len(ids), D)`` descriptors of training images with the current weights."""
        ...

    def encode_images(self, ids: Sequence[int] | np.ndarray) -> torch.Tensor:
        """``(len(ids), D)`` descriptors computed now, with no cache."""
        ...


@runtime_checkable
class DistillationTask(DescriptorTask, Protocol):
    """A task that also encodes label maps with its teacher and owns per-query sample weights."""

    #: ``(num_training_queries,)`` weights, indexed by ``batch["index"]``; the task owns them.
    sample_weights: torch.Tensor

    def teacher_descriptors(self, ids: Sequence[int] | np.ndarray) -> torch.Tensor: ...

    def teacher_rank_descriptors(self, ids: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Teacher descriptors computed now, with no cache (for ranks over a whole database)."""
        ...

    def set_sample_weights(self, indices: torch.Tensor, weights: torch.Tensor) -> None: ...


@runtime_checkable
class ImageWeightedTask(DistillationTask, Protocol):
    """A distillation task that also takes one weight per training-bank image (``SampleWeighting(unit='image')``)."""

    def set_image_weights(self, ids: torch.Tensor, weights: torch.Tensor) -> None: ...


@runtime_checkable
class ExportsStudent(Protocol):
    """A task that writes a plain student checkpoint (used by :class:`~structvpr.callbacks.ExportStudent`)."""

    def export_student(self, path: Any) -> Any: ...


def datamodule_of(trainer: Any) -> Any:
    """The trainer's datamodule, or None (Lightning attaches it at run time)."""
    return getattr(trainer, "datamodule", None)
