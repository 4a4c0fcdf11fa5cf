"""Building training tuples at MSLS scale: positives, non-negatives and random negatives; writes JSON.

Coordinates only (no image is read): database images 2 m apart along random straight
streets, queries scattered within 8 m of database images, as in a street-level dataset.
Two measurements:

- side by side on a 20,000-image database: the exact sampler (the allowed list of every
  query) against the rejection sampler used above ``TripletDataset.EXACT_SAMPLING_MAX``;
- the rejection sampler alone at MSLS-train size (1,000,000 database, 500,000 queries),
  with the peak resident memory of the process.

    python benchmarks/triplet_setup.py [--out benchmarks/results/triplet_setup.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from structvpr.data.datasets import ImageDataset, TripletDataset
from structvpr.data.vg import ImageRecord


def street_world(n_db: int, n_q: int, seed: int = 0) -> ImageDataset:
    """A bank of records with street-like coordinates and dummy paths."""
    rng = np.random.default_rng(seed)
    per_street = 500  # 1 km streets
    n_streets = -(-n_db // per_street)
    origins = rng.uniform(0, 200_000, (n_streets, 2))
    angles = rng.uniform(0, np.pi, n_streets)
    steps = np.arange(per_street) * 2.0
    db = (origins[:, None] + steps[None, :, None] * np.stack([np.cos(angles), np.sin(angles)], 1)[:, None]).reshape(-1, 2)
    db = db[:n_db]
    q = db[rng.integers(0, n_db, n_q)] + rng.uniform(-8, 8, (n_q, 2))
    path = Path("unused.jpg")
    records = [ImageRecord(path, (float(e), float(n)), None) for e, n in np.concatenate([db, q])]
    return ImageDataset(records[:n_db], records[n_db:], transform=lambda x: x)


def build(bank: ImageDataset, exact: bool, negatives: int = 10) -> tuple[float, TripletDataset]:
    saved = TripletDataset.EXACT_SAMPLING_MAX
    TripletDataset.EXACT_SAMPLING_MAX = 10**12 if exact else 0
    try:
        start = time.perf_counter()
        triplets = TripletDataset(bank, negatives, pos_radius=10.0, neg_radius=25.0, seed=0)
        return time.perf_counter() - start, triplets
    finally:
        TripletDataset.EXACT_SAMPLING_MAX = saved


def check(triplets: TripletDataset, rows: int = 2000) -> None:
    """Sampled rows: negatives distinct, in the database, beyond the negative radius."""
    utm = triplets.bank.utm.numpy()
    table = triplets.tuples.numpy()
    for row in np.random.default_rng(1).choice(len(table), min(rows, len(table)), replace=False):
        neg = table[row, 2:]
        q = utm[triplets.query_image_index(table[row, 0])]
        assert len(set(neg.tolist())) == len(neg) and (neg < triplets.bank.num_database).all()
        assert (np.linalg.norm(utm[neg] - q, axis=1) > 25.0).all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/triplet_setup.json")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ns = parser.parse_args()
    small, large = ((2_000, 1_000), (20_000, 10_000)) if ns.quick else ((20_000, 10_000), (1_000_000, 500_000))
    results: dict = {"machine": {"cpus": torch.get_num_threads(), "platform": platform.platform()}}

    bank = street_world(*small)
    exact_s, exact = build(bank, exact=True)
    reject_s, reject = build(bank, exact=False)
    check(exact)
    check(reject)
    results["side_by_side"] = {
        "database": small[0],
        "queries": small[1],
        "training_queries": reject.num_training_queries,
        "exact_s": round(exact_s, 2),
        "rejection_s": round(reject_s, 2),
        "exact_over_rejection": round(exact_s / reject_s, 1),
    }
    print(json.dumps(results["side_by_side"]), flush=True)

    start = time.perf_counter()
    bank = street_world(*large)
    world_s = time.perf_counter() - start
    large_s, triplets = build(bank, exact=False)
    check(triplets)
    results["msls_scale"] = {
        "database": large[0],
        "queries": large[1],
        "training_queries": triplets.num_training_queries,
        "mean_non_negatives": round(float(np.mean([len(n) for n in triplets.non_negatives])), 1),
        "records_s": round(world_s, 1),
        "tuples_s": round(large_s, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    print(json.dumps(results["msls_scale"]), flush=True)
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
