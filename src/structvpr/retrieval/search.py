"""Exact nearest-neighbour search over descriptors and radius search over coordinates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from scipy.spatial import cKDTree

Backend = Literal["auto", "torch", "faiss"]
BACKENDS = ("auto", "torch", "faiss")

#: Extra neighbours each search fetches so that exact ties at the k-th place are settled by
#: the lower database index, in every backend: exact unless more than this many database
#: items tie with the k-th.
TIE_MARGIN = 8


def faiss_available() -> bool:
    """Whether ``import faiss`` works here."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: Backend, device: torch.device | str) -> Literal["torch", "faiss"]:
    """The exact search ``auto`` stands for on ``device``.

    On CPU, faiss's flat index when faiss is installed (1.5-1.8x faster than a chunked matrix
    product here, ``benchmarks/recall.py``); on a GPU, the chunked matrix product on the
    device (no copy to the host; faiss-gpu is used only when asked for by name).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    return "faiss" if torch.device(device).type == "cpu" and faiss_available() else "torch"


def knn(
    queries: torch.Tensor,
    database: torch.Tensor,
    k: int,
    backend: Backend = "auto",
    query_chunk: int = 1024,
    database_chunk: int = 65536,
) -> torch.Tensor:
    """Indices of the ``k`` database descriptors nearest in L2 to each query, nearest first.

    Exact ties are ordered by the lower database index, whatever the backend (see
    :data:`TIE_MARGIN`), so results do not depend on the search used. The torch backend
    computes ``2 q.d - |d|^2`` (the L2 ranking without the query's constant) in blocks of
    ``query_chunk x database_chunk`` and merges per-block top-k, so memory stays bounded by the
    block size whatever the database size. The faiss backend uses an exact flat L2 index (on
    GPU when faiss has one and the inputs are on CUDA).

    Args:
        queries: ``(Q, D)`` float descriptors.
        database: ``(N, D)`` float descriptors.
        k: Neighbours to return; clipped to ``N``.
        backend: ``auto`` (see :func:`resolve_backend`), ``torch`` or ``faiss``.
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
    depth = min(k + TIE_MARGIN, database.shape[0])
    if resolve_backend(backend, queries.device) == "faiss":
        scores, found = _faiss_knn(queries, database, depth)
    else:
        scores, found = _torch_knn(queries, database, depth, query_chunk, database_chunk)
    return _settle_ties(scores, found)[:, :k]


def _settle_ties(scores: torch.Tensor, found: torch.Tensor) -> torch.Tensor:
    """Order each row by score (higher first), equal scores by the lower index."""
    by_index = torch.argsort(found, dim=1, stable=True)
    scores, found = scores.gather(1, by_index), found.gather(1, by_index)
    return found.gather(1, torch.argsort(scores, dim=1, descending=True, stable=True))


def _torch_knn(
    queries: torch.Tensor, database: torch.Tensor, k: int, query_chunk: int, database_chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    queries, database = queries.float(), database.float()
    out_s = torch.empty(queries.shape[0], k, device=queries.device)
    out_i = torch.empty(queries.shape[0], k, dtype=torch.long, device=queries.device)
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
        assert best_s is not None and best_i is not None
        out_s[q0 : q0 + query_chunk], out_i[q0 : q0 + query_chunk] = best_s, best_i
    return out_s, out_i


def _faiss_knn(queries: torch.Tensor, database: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    import faiss

    dim = database.shape[1]
    index: Any = faiss.IndexFlatL2(dim)
    if queries.is_cuda and hasattr(faiss, "StandardGpuResources"):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(np.ascontiguousarray(database.detach().float().cpu().numpy()))
    dist, idx = index.search(np.ascontiguousarray(queries.detach().float().cpu().numpy()), k)
    # Negated distances rank like the torch scores (higher is nearer).
    return torch.from_numpy(-dist).to(queries.device), torch.from_numpy(idx).to(queries.device)


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
