"""The descriptors of training images under an encoder's current weights, shared by every consumer.

A sub-epoch needs the descriptors of the same training images three times: hard-negative mining
(its queries, their positives and a negative pool), sample weighting (ranks over that set, for the
student and the teacher) and the cached teacher targets of its tuples. A :class:`DescriptorBank`
encodes each image once per version of the weights and answers every request from what it holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from structvpr.utils.memory import check_memory
from structvpr.utils.modes import eval_mode

#: ``loader(ids, key)``: batches (dicts holding ``key``) of the training-bank images ``ids``, in order.
Loader = Callable[[np.ndarray, str], Iterable[dict[str, Any]]]


def _device(encoder: nn.Module) -> torch.device:
    return next(iter(encoder.parameters()), torch.zeros(0)).device


@torch.no_grad()
def encode_loader(
    encoder: Any,
    loader: Iterable[dict[str, Any]],
    key: str = "image",
    dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
    rows: int | None = None,
) -> torch.Tensor:
    """Pre-PCA descriptors ``(N, D)`` (``encoder.pooled``) of every item of a loader, in eval mode.

    Batches stream into one preallocated array on the encoder's device (``dtype``: float16 halves
    it; ``out`` gives one, e.g. memory-mapped), so the peak is the output plus one batch. ``rows``
    is the number of items (default ``len(loader.dataset)``). The encoder's train/eval mode is
    restored.
    """
    device = _device(encoder)
    if out is None:
        n = rows if rows is not None else len(loader.dataset)  # type: ignore[attr-defined]
        out = torch.empty(n, encoder.pooled_dim, dtype=dtype, device=device)
    row = 0
    with eval_mode(encoder):
        for batch in loader:
            desc = encoder.pooled(batch[key].to(device))
            out[row : row + len(desc)] = desc.to(out)
            row += len(desc)
    if row != len(out):
        raise RuntimeError(f"the loader gave {row} items for {len(out)} rows")
    return out


class DescriptorBank:
    """Descriptors of training-bank images under one encoder's current weights.

    Consumers ask with :meth:`descriptors` for the ids they need; the bank encodes only the ids
    it does not hold yet and keeps them until :meth:`invalidate` (the task calls it when the
    weights move: after every optimiser step for the student, after every sub-epoch for the
    frozen teacher, which bounds memory by what one sub-epoch touches). :meth:`encode` computes
    without keeping anything (ranks over a whole database, PCA fitting).

    Under DDP each process encodes its share (``1 / world_size``) of a request and the shares are
    all-gathered, so every process returns the same array. ``set_storage(torch.float16)`` halves
    the array (search and losses still compute in float32); ``memmap_dir`` keeps it in
    memory-mapped files on the host instead (a single process then streams straight into them).

    Args:
        encoder: The network: ``pooled(x) -> (B, D)`` and ``pooled_dim`` (a :class:`~structvpr.models.PlaceEncoder`).
        key: The batch entry it reads: ``image`` or ``label``.
        name: Names the bank in messages and files (``student``, ``teacher``).

    Example:
        >>> bank = DescriptorBank(task.encoder, "image")            # doctest: +SKIP
        >>> bank.bind(datamodule.train_images_dataloader, trainer)  # doctest: +SKIP
        >>> bank.descriptors([0, 5, 9]).shape                       # doctest: +SKIP
        torch.Size([3, 256])

    """

    def __init__(self, encoder: Any, key: str = "image", name: str = "student") -> None:
        self.encoder, self.key, self.name = encoder, key, name
        self.dtype: torch.dtype = torch.float32
        self.memmap_dir: Path | None = None
        #: Images this process has encoded (requests answered from the bank do not count).
        self.images_encoded = 0
        #: Increases at every :meth:`invalidate`.
        self.version = 0
        self._ids = np.zeros(0, dtype=np.int64)
        self._array: torch.Tensor | None = None
        self._loader: Loader | None = None
        self._trainer: Any = None

    # -- set-up -------------------------------------------------------------------------
    def bind(self, loader: Loader, trainer: Any = None) -> None:
        """Where images come from (``loader(ids, key)``) and, with a Lightning ``trainer``, the processes."""
        self._loader, self._trainer = loader, trainer

    def set_storage(self, dtype: torch.dtype = torch.float32, memmap_dir: str | Path | None = None) -> None:
        """Storage of the held descriptors: ``float32`` or ``float16``, in memory or memory-mapped under ``memmap_dir``."""
        if dtype not in (torch.float32, torch.float16):
            raise ValueError(f"a descriptor bank stores float32 or float16, got {dtype}")
        self.dtype, self.memmap_dir = dtype, None if memmap_dir is None else Path(memmap_dir)
        self.invalidate()

    @property
    def dim(self) -> int:
        """Descriptor size ``D``."""
        return int(self.encoder.pooled_dim)

    @property
    def ids(self) -> np.ndarray:
        """The sorted bank ids held under the current version."""
        return self._ids

    @property
    def array(self) -> torch.Tensor | None:
        """The held descriptors, one row per id of :attr:`ids` (None before the first request)."""
        return self._array

    def invalidate(self) -> None:
        """The weights moved: forget every held descriptor."""
        self._ids, self._array = np.zeros(0, dtype=np.int64), None
        self.version += 1

    # -- requests -----------------------------------------------------------------------
    def descriptors(self, ids: Sequence[int] | np.ndarray) -> torch.Tensor:
        """``(len(ids), D)`` descriptors of the training-bank images ``ids`` under the current weights.

        Encodes only the ids not held yet. A request for exactly the held set, in order, returns
        the held array itself (no copy).
        """
        wanted = np.asarray(ids, dtype=np.int64).ravel()
        missing = np.setdiff1d(wanted, self._ids)
        if len(missing):
            self._add(missing)
        assert self._array is not None
        if np.array_equal(wanted, self._ids):
            return self._array
        rows = torch.from_numpy(np.searchsorted(self._ids, wanted)).to(self._array.device)
        return self._array[rows]

    def encode(self, ids: Sequence[int] | np.ndarray, encoder: Any = None) -> torch.Tensor:
        """``(len(ids), D)`` descriptors computed now and not kept, on the encoder's device.

        ``encoder``: another network reading the same input (a fold teacher), instead of the bank's.
        """
        return self._encode(np.asarray(ids, dtype=np.int64).ravel(), encoder or self.encoder, torch.float32, False)

    def _add(self, missing: np.ndarray) -> None:
        known, held = self._ids, self._array
        total = len(known) + len(missing)
        memmap = self.memmap_dir is not None
        if not memmap:
            check_memory(
                total * self.dim * self.dtype.itemsize,
                _device(self.encoder),
                self._trainer,
                f"{self.name} descriptors of {total:,} training images x {self.dim} dimensions",
                "lower data.init_args.cache_queries (queries per sub-epoch) or "
                "HardNegativeMining(cache_negatives), or set HardNegativeMining(descriptor_memmap_dir)",
            )
        fresh = self._encode(missing, self.encoder, self.dtype, memmap)
        ids_all = np.concatenate([known, missing])
        order = np.argsort(ids_all, kind="stable")
        if held is None or not len(known):
            merged = fresh
        elif memmap:  # merge on disk: the host holds only what it touches
            merged = self._memmap_array(len(ids_all), fresh.dtype)
            position = np.empty_like(order)
            position[order] = np.arange(len(order))  # where each of known + missing lands
            merged[torch.from_numpy(position[: len(known)])] = held.to(merged)
            merged[torch.from_numpy(position[len(known) :])] = fresh.to(merged)
        else:
            merged = torch.cat([held, fresh])[torch.from_numpy(order).to(fresh.device)]
        self._ids, self._array = ids_all[order], merged

    def _encode(self, ids: np.ndarray, encoder: Any, dtype: torch.dtype, memmap: bool) -> torch.Tensor:
        if self._loader is None:
            raise RuntimeError(f"the {self.name} descriptor bank is not bound to a data source: call bind(loader) first")
        trainer = self._trainer
        world = int(getattr(trainer, "world_size", 1) or 1)
        rank = int(getattr(trainer, "global_rank", 0) or 0)
        shards = np.array_split(ids, world)
        out = self._memmap_array(len(ids), dtype) if memmap and world == 1 else None
        local = encode_loader(encoder, self._loader(shards[rank], self.key), self.key, dtype, out, rows=len(shards[rank]))
        self.images_encoded += len(shards[rank])
        if world == 1:
            return local
        size = max(len(s) for s in shards)
        padded = torch.zeros(size, local.shape[1], dtype=local.dtype, device=local.device)
        padded[: len(local)] = local
        gathered = trainer.strategy.all_gather(padded)  # (world, size, D)
        return torch.cat([gathered[r, : len(shard)] for r, shard in enumerate(shards)])

    def _memmap_array(self, rows: int, dtype: torch.dtype) -> torch.Tensor:
        """A ``(rows, D)`` tensor backed by a new file in ``memmap_dir``, unlinked at once (the mapping
        keeps it until the tensor is dropped)."""  # noqa: D205
        if self.memmap_dir is None:
            raise RuntimeError("no memmap_dir set (set_storage)")
        self.memmap_dir.mkdir(parents=True, exist_ok=True)
        path = self.memmap_dir / f"{self.name}-{os.getpid()}-{self.version}-{rows}.bin"
        np_dtype = np.float16 if dtype == torch.float16 else np.float32
        array = np.memmap(path, dtype=np_dtype, mode="w+", shape=(max(rows, 1), self.dim))[:rows]
        path.unlink()
        return torch.from_numpy(array)
