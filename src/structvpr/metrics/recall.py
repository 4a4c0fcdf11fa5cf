"""Recall@N for place recognition: a functional core and a DDP-correct torchmetrics Metric."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from structvpr.retrieval.search import Backend, first_per_group, group_codes, knn, nearest_distance


def _check_ns(ns: Sequence[int]) -> tuple[int, ...]:
    ns = tuple(int(n) for n in ns)
    if not ns or min(ns) < 1:
        raise ValueError(f"ns must be positive integers, got {ns}")
    return tuple(sorted(set(ns)))


def first_positive_rank(
    queries: torch.Tensor,
    database: torch.Tensor,
    max_rank: int,
    *,
    query_utm: torch.Tensor | np.ndarray | None = None,
    database_utm: torch.Tensor | np.ndarray | None = None,
    radius: float = 25.0,
    positives: Sequence[Sequence[int] | np.ndarray] | None = None,
    backend: Backend = "auto",
    database_groups: Sequence[Any] | np.ndarray | None = None,
    exclude: torch.Tensor | np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank (1-based) of the first true positive among each query's retrieved database items.

    Positives are database items within ``radius`` of the query (from UTM coordinates) or
    the given per-query index lists.

    Args:
        queries: ``(Q, D)`` descriptors.
        database: ``(N, D)`` descriptors.
        max_rank: Search depth; a query whose first positive lies deeper gets ``max_rank + 1``.
        query_utm: ``(Q, 2)`` coordinates (with ``database_utm`` and ``radius``).
        database_utm: ``(N, 2)`` coordinates.
        radius: Positive radius in metres.
        positives: Alternatively, the positive database indices of every query.
        backend: Search backend (see :func:`structvpr.retrieval.search.knn`).
        database_groups: Optional group of every database item (e.g. its panorama id): the
            ranked list then keeps only the first item of each group, so rank r is the r-th
            distinct group (NetVLAD's one-hit-per-panorama count on Tokyo 24/7).
        exclude: Optional ``(Q,)`` database index to leave out of each query's ranked list
            (``-1``: none), so a database image is ranked as a query against the rest of the
            database rather than finding itself at rank 1. ``has_positive`` still counts it.

    Returns:
        ``ranks``: ``(Q,)`` int64 in ``1 .. max_rank + 1``; ``has_positive``: ``(Q,)`` bool,
        False for queries with no positive in the whole database.

    """
    if (positives is None) == (query_utm is None or database_utm is None):
        raise ValueError("give either positives or both query_utm and database_utm")
    num_q = queries.shape[0]
    if num_q == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool)
    if exclude is not None:
        if database_groups is not None:
            raise ValueError("exclude and database_groups cannot be combined")
        left_out = torch.as_tensor(np.asarray(exclude), dtype=torch.long).view(-1, 1)
        if left_out.shape[0] != num_q:
            raise ValueError(f"exclude has {left_out.shape[0]} entries for {num_q} queries")
        retrieved = knn(queries, database, max_rank + 1, backend=backend).cpu()
        keep = retrieved != left_out
        # Kept items first, in retrieval order; the left-out one becomes an empty slot at the end.
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
        retrieved = torch.gather(torch.where(keep, retrieved, -1), 1, order)[:, :max_rank]
    elif database_groups is None:
        retrieved = knn(queries, database, max_rank, backend=backend).cpu()
    else:
        codes = group_codes(database_groups)
        if len(codes) != database.shape[0]:
            raise ValueError(f"database_groups has {len(codes)} entries for {database.shape[0]} database items")
        # The max_rank-th distinct group lies within max_rank * (largest group) items.
        depth = max_rank * int(np.bincount(codes).max())
        retrieved = torch.from_numpy(
            first_per_group(knn(queries, database, depth, backend=backend).cpu().numpy(), codes, max_rank)
        )
    hit, has_positive = hit_matrix(
        retrieved,
        query_utm=query_utm,
        database_utm=database_utm,
        radius=radius,
        positives=positives,
        num_database=database.shape[0],
    )
    k = retrieved.shape[1]
    ranks = torch.where(hit.any(1), hit.float().argmax(1) + 1, torch.full((num_q,), max_rank + 1))
    # Fewer than max_rank database items: a miss is still max_rank + 1.
    ranks = torch.where(ranks > k, torch.full_like(ranks, max_rank + 1), ranks)
    return ranks, has_positive


def hit_matrix(
    retrieved: torch.Tensor,
    *,
    query_utm: torch.Tensor | np.ndarray | None = None,
    database_utm: torch.Tensor | np.ndarray | None = None,
    radius: float = 25.0,
    positives: Sequence[Sequence[int] | np.ndarray] | None = None,
    num_database: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which retrieved database items are true positives, by radius or by given lists.

    Args:
        retrieved: ``(Q, K)`` database indices; ``-1`` marks an empty slot (never a hit).
        query_utm: ``(Q, 2)`` coordinates (with ``database_utm`` and ``radius``).
        database_utm: ``(N, 2)`` coordinates.
        radius: Positive radius.
        positives: Alternatively, the positive database indices of every query.
        num_database: N, to check ``database_utm`` against.

    Returns:
        ``hit``: ``(Q, K)`` bool; ``has_positive``: ``(Q,)`` bool, whether the query has any
        positive in the whole database.
    """
    if (positives is None) == (query_utm is None or database_utm is None):
        raise ValueError("give either positives or both query_utm and database_utm")
    retrieved = torch.as_tensor(retrieved).cpu().long()
    num_q = retrieved.shape[0]
    valid_slot = retrieved >= 0
    if positives is not None:
        if len(positives) != num_q:
            raise ValueError(f"positives has {len(positives)} entries for {num_q} queries")
        has_positive = torch.tensor([len(p) > 0 for p in positives], dtype=torch.bool)
        if num_q == 0:
            return torch.zeros(retrieved.shape, dtype=torch.bool), has_positive
        hit = (
            torch.stack(
                [torch.from_numpy(np.isin(r, np.asarray(p, dtype=np.int64))) for r, p in zip(retrieved.numpy(), positives)]
            )
            & valid_slot
        )
        return hit, has_positive
    q_utm = torch.as_tensor(np.asarray(query_utm), dtype=torch.float64)
    db_utm = torch.as_tensor(np.asarray(database_utm), dtype=torch.float64)
    n = db_utm.shape[0] if num_database is None else num_database
    if q_utm.shape != (num_q, 2) or db_utm.shape != (n, 2):
        raise ValueError(f"coordinates must be (Q, 2) and (N, 2), got {tuple(q_utm.shape)}, {tuple(db_utm.shape)}")
    hit = ((db_utm[retrieved.clamp(min=0)] - q_utm[:, None]).norm(dim=-1) <= radius) & valid_slot
    has_positive = torch.from_numpy(nearest_distance(q_utm.numpy(), db_utm.numpy()) <= radius)
    return hit, has_positive


def recall_at_n(
    queries: torch.Tensor,
    database: torch.Tensor,
    ns: Sequence[int] = (1, 5, 10, 20),
    *,
    query_utm: torch.Tensor | np.ndarray | None = None,
    database_utm: torch.Tensor | np.ndarray | None = None,
    radius: float = 25.0,
    positives: Sequence[Sequence[int] | np.ndarray] | None = None,
    backend: Backend = "auto",
    database_groups: Sequence[Any] | np.ndarray | None = None,
) -> dict[str, float]:
    """Fraction of queries with a true positive among their top-N retrieved database items.

    Queries with no positive anywhere in the database are excluded from the denominator
    and counted in ``num_excluded`` (the convention of the official MSLS protocol; the VG
    benchmark instead keeps them as failures: multiply by ``num_queries / (num_queries +
    num_excluded)`` to compare). N larger than the database counts the whole database.
    ``database_groups`` counts one hit per group (see :func:`first_positive_rank`).

    Returns:
        ``{"R@1": ..., "R@5": ..., "num_queries": valid count, "num_excluded": count}``.

    """
    ns = _check_ns(ns)
    ranks, valid = first_positive_rank(
        queries,
        database,
        max(ns),
        query_utm=query_utm,
        database_utm=database_utm,
        radius=radius,
        positives=positives,
        backend=backend,
        database_groups=database_groups,
    )
    ranks = ranks[valid]
    out: dict[str, float] = {}
    for n in ns:
        out[f"R@{n}"] = float((ranks <= n).float().mean()) if len(ranks) else float("nan")
    out["num_queries"] = int(valid.sum())
    out["num_excluded"] = int((~valid).sum())
    return out


class RecallAtN(Metric):
    """Recall@N over a database and queries seen in any order, on any number of processes.

    ``update`` takes descriptors with their dataset indices, query flags and UTM
    coordinates; ``compute`` gathers every process's states, drops the repeats that a
    distributed sampler pads in (by dataset index), splits database from queries and runs
    an exact search. Values are fractions in ``[0, 1]``.

    Args:
        ns: The N of Recall@N.
        radius: A database image within this many metres of the query is correct.
        positives: Optional per-query lists of positive database indices (query order);
            when given they replace the radius rule (frame windows, precomputed GT).
        backend: ``auto`` (faiss flat on CPU, the chunked matrix product on GPU), ``torch`` or
            ``faiss``; exact ties go to the lower database index in every backend.
        database_groups: Optional group (panorama id) of every database item in dataset
            order: one hit per group is counted (see :func:`first_positive_rank`).

    """

    descriptors: list[torch.Tensor]
    indices: list[torch.Tensor]
    is_query: list[torch.Tensor]
    utm: list[torch.Tensor]
    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(
        self,
        ns: Sequence[int] = (1, 5, 10, 20),
        radius: float = 25.0,
        positives: Sequence[Sequence[int]] | None = None,
        backend: Backend = "auto",
        database_groups: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ns = _check_ns(ns)
        if radius <= 0:
            raise ValueError(f"radius must be > 0, got {radius}")
        self.radius = radius
        self.positives = positives
        self.backend: Backend = backend
        self.database_groups = database_groups
        self.add_state("descriptors", default=[], dist_reduce_fx="cat")
        self.add_state("indices", default=[], dist_reduce_fx="cat")
        self.add_state("is_query", default=[], dist_reduce_fx="cat")
        self.add_state("utm", default=[], dist_reduce_fx="cat")

    def update(
        self, descriptors: torch.Tensor, indices: torch.Tensor, is_query: torch.Tensor, utm: torch.Tensor | None = None
    ) -> None:
        """Add a batch.

        Args:
            descriptors: ``(B, D)``.
            indices: ``(B,)`` dataset indices (database first, then queries).
            is_query: ``(B,)`` bool.
            utm: ``(B, 2)`` coordinates (needed unless ``positives`` was given).

        """
        self.descriptors.append(descriptors.detach().float())
        self.indices.append(torch.as_tensor(indices, device=descriptors.device).long())
        self.is_query.append(torch.as_tensor(is_query, device=descriptors.device).bool())
        if utm is None:
            utm = torch.zeros(descriptors.shape[0], 2, device=descriptors.device)
        self.utm.append(torch.as_tensor(utm, device=descriptors.device).double())

    def compute(self) -> dict[str, torch.Tensor]:
        """Recall@N per N, plus ``num_queries`` and ``num_excluded``."""
        desc, idx = dim_zero_cat(self.descriptors), dim_zero_cat(self.indices)
        is_q, utm = dim_zero_cat(self.is_query), dim_zero_cat(self.utm)
        n_db = int((~is_q).sum())
        if bool((idx[1:] > idx[:-1]).all()) and not bool(is_q[:n_db].any()):
            # One process, in dataset order, database first (the usual evaluation): slices, no copies.
            db_pos, q_pos = slice(0, n_db), slice(n_db, len(idx))
        else:
            # Gather each descriptor once, straight into its database/query block.
            keep = first_occurrences(idx)
            q_pos, db_pos = keep[is_q[keep]], keep[~is_q[keep]]  # type: ignore[assignment]
        queries, database = desc[q_pos], desc[db_pos]
        result = recall_at_n(
            queries,
            database,
            self.ns,
            backend=self.backend,
            database_groups=self.database_groups,
            **self.match_rule(utm[q_pos].cpu(), utm[db_pos].cpu()),
        )
        return {k: torch.tensor(v, device=self.device) for k, v in result.items()}

    def match_rule(self, query_utm: torch.Tensor | np.ndarray, database_utm: torch.Tensor | np.ndarray) -> dict[str, Any]:
        """What a correct match is, as keyword arguments of :func:`hit_matrix` and :func:`first_positive_rank`:
        the given positive lists when there are some, else the radius over these coordinates."""  # noqa: D205
        if self.positives is not None:
            return {"positives": self.positives}
        return {"query_utm": query_utm, "database_utm": database_utm, "radius": self.radius}


def first_occurrences(indices: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each dataset index, in index order.

    Drops the repeats that a ``DistributedSampler`` pads in, wherever descriptors are gathered.
    """
    order = torch.argsort(indices, stable=True)
    sorted_idx = indices[order]
    first = torch.ones_like(sorted_idx, dtype=torch.bool)
    first[1:] = sorted_idx[1:] != sorted_idx[:-1]
    return order[first]
