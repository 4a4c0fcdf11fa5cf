"""Exact nearest-neighbour search over descriptors and radius search over coordinates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from scipy.spatial import cKDTree

Backend = Literal["torch", "faiss"]


def knn(queries: torch.Tensor, database: torch.Tensor, k: int, backend: Backend = "torch",
        query_chunk: int = 1024, database_chunk: int = 65536) -> torch.Tensor:  # fmt: skip
    """Indices of the ``k`` database descriptors nearest in L2 to each query, nearest first.

    The torch backend computes ``2 q.d - |d|^2`` (the L2 ranking without the query's
    constant) in blocks of ``query_chunk x database_chunk`` and merges per-block top-k, so
    memory stays bounded by the block size whatever the database size. The faiss backend
    uses an exact flat L2 index (on GPU when faiss has one and the inputs are on CUDA).

    Args:
        queries: ``(Q, D)`` float descriptors.
        database: ``(N, D)`` float descriptors.
        k: Neighbours to return; clipped to ``N``.
        backend: ``torch`` or ``faiss``.
        query_chunk: Queries per block (torch backend).
        database_chunk: Database rows per block (torch backend).

    Returns:
        ``(Q, min(k, N))`` int64 database indices on the queries' device.

    """
    if queries.ndim != 2 or database.ndim != 2 or queries.shape[1] != database.shape[1]:
        raise ValueError(f"need (Q, D) and (N, D) descriptors, got {tuple(queries.shape)} and {tuple(database.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, database.shape[0])
    if backend == "faiss":
        return _faiss_knn(queries, database, k)
    if backend != "torch":
        raise ValueError(f"backend must be 'torch' or 'faiss', got {backend!r}")
    queries, database = queries.float(), database.float()
    out = torch.empty(queries.shape[0], k, dtype=torch.long, device=queries.device)
    sq_norms = (database * database).sum(1)
    for q0 in range(0, queries.shape[0], query_chunk):
        q = queries[q0 : q0 + query_chunk]
        best_s = best_i = None
        for d0 in range(0, database.shape[0], database_chunk):
            d = database[d0 : d0 + database_chunk]
            scores = torch.addmm(sq_norms[d0 : d0 + database_chunk], q, d.T, beta=-1, alpha=2)
            s, i = scores.topk(min(k, d.shape[0]), dim=1)
            i += d0
            if best_s is not None and best_i is not None:
                s, j = torch.cat([best_s, s], 1).topk(k, dim=1)
                i = torch.cat([best_i, i], 1).gather(1, j)
            best_s, best_i = s, i
        assert best_i is not None
        out[q0 : q0 + query_chunk] = best_i
    return out


def _faiss_knn(queries: torch.Tensor, database: torch.Tensor, k: int) -> torch.Tensor:
    import faiss

    dim = database.shape[1]
    index: Any = faiss.IndexFlatL2(dim)
    if queries.is_cuda and hasattr(faiss, "StandardGpuResources"):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(np.ascontiguousarray(database.detach().float().cpu().numpy()))
    _, idx = index.search(np.ascontiguousarray(queries.detach().float().cpu().numpy()), k)
    return torch.from_numpy(idx).to(queries.device)


def group_codes(groups: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Integer codes ``0 .. G-1`` for any array of group labels (e.g. panorama ids)."""
    return np.unique(np.asarray(groups), return_inverse=True)[1].astype(np.int64).ravel()


def first_per_group(retrieved: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """Keep each ranked list's first item of every group, in rank order, up to ``k`` items.

    Used to count one hit per panorama (Tokyo 24/7: 12 database cutouts per panorama).

    Args:
        retrieved: ``(Q, K)`` database indices, nearest first.
        groups: ``(N,)`` integer group of each database item (see :func:`group_codes`).
        k: Length of the output lists.

    Returns:
        ``(Q, k)`` int64 database indices, padded with ``-1`` where fewer than ``k`` groups
        were retrieved.
    """
    out = np.full((len(retrieved), k), -1, dtype=np.int64)
    for i, row in enumerate(np.asarray(retrieved)):
        _, first = np.unique(groups[row], return_index=True)
        keep = row[np.sort(first)][:k]
        out[i, : len(keep)] = keep
    return out


def radius_neighbours(queries: np.ndarray, database: np.ndarray, radius: float) -> list[np.ndarray]:
    """For each query point, the sorted indices of database points within ``radius``."""
    tree = cKDTree(np.asarray(database, dtype=np.float64).reshape(-1, 2))
    hits = tree.query_ball_point(np.asarray(queries, dtype=np.float64).reshape(-1, 2), r=radius)
    return [np.array(sorted(h), dtype=np.int64) for h in hits]


def nearest_distance(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Distance from each query point to its nearest database point."""
    tree = cKDTree(np.asarray(database, dtype=np.float64).reshape(-1, 2))
    return tree.query(np.asarray(queries, dtype=np.float64).reshape(-1, 2), k=1)[0]
