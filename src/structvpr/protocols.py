"""The contracts between callbacks, tasks and datamodules: what mining, weighting and PCA use.

A datamodule of another project runs :class:`~structvpr.callbacks.HardNegativeMining` and
:class:`~structvpr.callbacks.SampleWeighting` by satisfying :class:`TrainingData`; a task by
satisfying :class:`DescriptorTask` (mining, PCA) or :class:`DistillationTask` (weighting): both read
descriptors from the task's :class:`Bank` objects (``task.banks``), nothing else of it.
Callbacks check them with ``isinstance`` in ``setup`` and then use nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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

    def set_tuples(
        self, k: int, queries: np.ndarray, positives: Any, negatives: Any, mined: bool = True, database: np.ndarray | None = None
    ) -> None: ...


@runtime_checkable
class TrainingData(Protocol):
    """A datamodule that serves sub-epochs of tuples and encoding passes over its training images."""

    @property
    def training_tuples(self) -> TupleTable: ...

    def train_images_dataloader(
        self, ids: Sequence[int] | np.ndarray | None = None, key: str = "image"
    ) -> Iterable[dict[str, Any]]: ...


@runtime_checkable
class Bank(Protocol):
    """Descriptors of training images under one encoder's current weights (:class:`~structvpr.bank.DescriptorBank`)."""

    @property
    def dim(self) -> int: ...

    def descriptors(self, ids: Sequence[int] | np.ndarray) -> torch.Tensor:
        """``(len(ids), D)`` descriptors with the current weights (encoded once per weights version)."""
        ...

    def encode(self, ids: Sequence[int] | np.ndarray, encoder: Any = None) -> torch.Tensor:
        """``(len(ids), D)`` descriptors computed now and not kept; ``encoder``: another network on the same input."""
        ...

    def set_storage(self, dtype: torch.dtype = torch.float32, memmap_dir: Any = None) -> None:
        """float32 or float16, in memory or memory-mapped under ``memmap_dir``."""
        ...


@runtime_checkable
class DescriptorTask(Protocol):
    """A task whose training images' descriptors mining, weighting and PCA read from its banks."""

    #: One bank per encoder: ``student`` always; ``teacher`` for a :class:`DistillationTask`.
    banks: Mapping[str, Bank]


@runtime_checkable
class DistillationTask(DescriptorTask, Protocol):
    """A task with a teacher bank (``banks["teacher"]``) that owns per-query sample weights."""

    #: ``(num_training_queries,)`` weights, indexed by ``batch["index"]``; the task owns them.
    sample_weights: torch.Tensor

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
