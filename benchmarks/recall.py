"""Recall@N compute time against its limits, side by side in one run; writes JSON.

Compares, on the same random L2-normalised descriptors:
  metric   structvpr RecallAtN with its default backend (auto: faiss flat on CPU): update with every
           descriptor, then compute (dedupe, search, hits)
  metric_torch  the same with backend="torch" (the chunked matrix product, the GPU path)
  bare     the compute limit: a chunked matrix product with top-k, nothing else
  faiss    a bare faiss IndexFlatL2 search
  tm       torchmetrics RetrievalHitRate fed (scores, targets, query indexes) as a user would;
           all pairs do not fit in memory at these sizes, so it runs on a subset of queries
           and its time is scaled linearly to all queries (stated in the JSON)
and, in a child process, the peak memory of RecallAtN on a 1,000,000 x 256 database.

    python benchmarks/recall.py [--quick] [--out benchmarks/results/recall.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import faiss
import torch
import torch.nn.functional as F

from structvpr.metrics import RecallAtN


def timed(fn, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def case(n_db: int, n_q: int, dim: int, k: int = 20, tm_queries: int = 50) -> dict:
    g = torch.Generator().manual_seed(0)
    db = F.normalize(torch.randn(n_db, dim, generator=g), dim=1)
    q = F.normalize(torch.randn(n_q, dim, generator=g), dim=1)
    db_utm = torch.rand(n_db, 2, generator=g).double() * 5000
    q_utm = torch.rand(n_q, 2, generator=g).double() * 5000
    desc = torch.cat([db, q])
    utm = torch.cat([db_utm, q_utm])
    index = torch.arange(n_db + n_q)
    is_q = index >= n_db

    def metric(backend="auto"):
        m = RecallAtN(ns=(1, 5, 10, 20), backend=backend)
        for chunk in index.split(4096):
            m.update(desc[chunk], chunk, is_q[chunk], utm[chunk])
        return m.compute()

    def bare():
        for q0 in range(0, n_q, 1024):
            (q[q0 : q0 + 1024] @ db.T).topk(k, dim=1)

    def faiss_flat():
        idx = faiss.IndexFlatL2(dim)
        idx.add(db.numpy())
        idx.search(q.numpy(), k)

    from torchmetrics.retrieval import RetrievalHitRate

    def tm_subset():
        m = RetrievalHitRate(top_k=k)
        sub = q[:tm_queries]
        scores = sub @ db.T  # (Qs, N)
        target = torch.cdist(q_utm[:tm_queries], db_utm) <= 25.0
        indexes = torch.arange(tm_queries)[:, None].expand_as(scores)
        m.update(scores.flatten(), target.flatten(), indexes.flatten())
        m.compute()

    t_metric = timed(metric, 2)
    t_metric_torch = timed(lambda: metric("torch"), 2)
    t_bare = timed(bare, 2)
    t_faiss = timed(faiss_flat, 2)
    fastest = min(t_bare, t_faiss)
    t_tm = timed(tm_subset, 1) * n_q / tm_queries
    return {
        "database": n_db,
        "queries": n_q,
        "dim": dim,
        "seconds": {
            "metric": round(t_metric, 3),
            "metric_torch": round(t_metric_torch, 3),
            "bare_matmul_topk": round(t_bare, 3),
            "faiss_flat": round(t_faiss, 3),
            "torchmetrics_hit_rate_scaled": round(t_tm, 2),
        },
        "ratios": {
            "metric_over_fastest_bare": round(t_metric / fastest, 3),
            "metric_torch_over_bare_matmul": round(t_metric_torch / t_bare, 3),
            "faiss_over_metric": round(t_faiss / t_metric, 3),
            "torchmetrics_over_metric": round(t_tm / t_metric, 1),
        },
        "torchmetrics_note": f"timed on {tm_queries} queries, scaled x{n_q / tm_queries:.0f}",
    }


def peak_memory_child(n_db: int, n_q: int, dim: int) -> None:
    g = torch.Generator().manual_seed(0)
    m = RecallAtN(ns=(1, 5, 10, 20))
    for start in range(0, n_db + n_q, 65536):
        stop = min(start + 65536, n_db + n_q)
        chunk = torch.arange(start, stop)
        m.update(
            F.normalize(torch.randn(len(chunk), dim, generator=g), dim=1),
            chunk,
            chunk >= n_db,
            torch.rand(len(chunk), 2, generator=g).double() * 20000,
        )
    start = time.perf_counter()
    out = m.compute()
    secs = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        json.dumps(
            {
                "database": n_db,
                "queries": n_q,
                "dim": dim,
                "compute_seconds": round(secs, 2),
                "peak_rss_gib": round(peak_gib, 2),
                "descriptor_gib": round((n_db + n_q) * dim * 4 / 2**30, 2),
                "R@1": float(out["R@1"]),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--out", default="benchmarks/results/recall.json")
    parser.add_argument("--skip-memory", action="store_true", help="skip the 1,000,000 x 256 peak-memory run")
    parser.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child:
        return peak_memory_child(*ns.child)
    sizes = [(100_000, 10_000, 256), (20_000, 2_000, 4096)]
    mem = (1_000_000, 1_000, 256)
    if ns.quick:
        sizes, mem = [(5_000, 500, 64)], (50_000, 100, 64)
    results = {
        "machine": {
            "cpus": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "faiss": faiss.__version__,
        },
        "cases": [],
    }
    for n_db, n_q, dim in sizes:
        print(f"case {n_db} x {n_q} x {dim} ...", flush=True)
        results["cases"].append(case(n_db, n_q, dim))
        print(json.dumps(results["cases"][-1]["ratios"]), flush=True)
    if not ns.skip_memory:
        child = subprocess.run([sys.executable, __file__, "--child", *map(str, mem)], capture_output=True, text=True, check=True)
        results["peak_memory"] = json.loads(child.stdout.strip().splitlines()[-1])
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
