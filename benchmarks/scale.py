"""Per-sub-epoch bookkeeping of mining + sample weighting on MSLS-sized banks; writes JSON.

For banks of 10k to 1.4M images laid out like MSLS (22 cities, each a street route with
database images every 3 m and queries along it), one process per bank size builds the
training tuples' coordinate tables (GPS positives within 10 m, non-negatives within 25 m),
then runs sub-epochs of 1,000 queries with a pool of 1,000 negatives: the real
``HardNegativeMining.mine`` and ``SampleWeighting.on_train_epoch_start`` code, with the
network replaced by a cheap stand-in that returns a fixed random 4,096-d descriptor per image
(encoding is the GPU's job and is measured by benchmarks/gpu_check.sh). It reports wall time
and peak resident memory per sub-epoch, the memory of the coordinate tables, and the growth
from 100k to 1.4M images.

    python benchmarks/scale.py [--sizes 10000 100000 1000000 1400000] [--out benchmarks/results/scale.json]
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
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

CITIES, DB_STEP_M, DIM = 22, 3.0, 4096


def _rss_mib() -> float:
    """Current resident memory of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Bank:
    """Coordinates of an MSLS-like bank: ``num_database`` database images, then the queries."""

    def __init__(self, size: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        n_db = int(size * 0.65)
        per_city = np.full(CITIES, n_db // CITIES)
        per_city[: n_db % CITIES] += 1
        db, qs = [], []
        for c, n in enumerate(per_city):
            heading = np.cumsum(rng.normal(0, 0.05, n))  # a winding route
            step = np.stack([np.cos(heading), np.sin(heading)], 1) * DB_STEP_M
            route = np.cumsum(step, 0) + np.array([c * 1e7, 0.0])  # cities far apart, as our MSLS reader does
            db.append(route)
            n_q = round(n * 0.35 / 0.65)
            pick = rng.integers(0, n, n_q)
            qs.append(route[pick] + rng.normal(0, 3.0, (n_q, 2)))
        self.num_database = n_db
        self.utm = torch.from_numpy(np.concatenate(db + qs))
        self.with_labels = False


class _StandInBank:
    """A bank (structvpr.protocols.Bank) of the stand-in task: one fixed random descriptor per image id."""

    dim = DIM

    def __init__(self, task: _StandIn, salt: int) -> None:
        self.task, self.salt = task, salt

    def descriptors(self, ids: np.ndarray) -> torch.Tensor:
        return self.task.encode(ids, self.salt)

    def encode(self, ids: np.ndarray, encoder: Any = None) -> torch.Tensor:
        return self.task.encode(ids, self.salt)

    def set_storage(self, dtype: torch.dtype = torch.float32, memmap_dir: Any = None) -> None:
        pass


class _StandIn:
    """A task satisfying structvpr.protocols.DistillationTask whose banks return a fixed random
    descriptor per image id (normalised)."""  # noqa: D205

    def __init__(self, num_queries: int) -> None:
        self.hparams = {"search_backend": "torch"}
        self.device = torch.device("cpu")
        self.images_encoded = 0
        self.sample_weights = torch.ones(num_queries)
        self.banks = {"student": _StandInBank(self, 0), "teacher": _StandInBank(self, 7)}
        self._memo: dict[int, tuple[bytes, torch.Tensor]] = {}

    def encode(self, ids: np.ndarray, salt: int) -> torch.Tensor:
        ids = np.asarray(ids, dtype=np.int64)
        if salt in self._memo and self._memo[salt][0] == ids.tobytes():  # a bank shares one pass per update
            return self._memo[salt][1]
        self.images_encoded += len(ids)
        # one cheap generator draw per image id: deterministic, no table of the whole bank
        base = torch.from_numpy(((ids[:, None] * 2654435761 + np.arange(64) * 40503 + salt) % 1000003).astype(np.float32))
        desc = base.repeat(1, DIM // 64) * torch.linspace(0.5, 1.5, DIM)
        desc = torch.nn.functional.normalize(desc - desc.mean(1, keepdim=True), dim=1)
        self._memo[salt] = (ids.tobytes(), desc)
        return desc

    def set_sample_weights(self, indices: torch.Tensor, weights: torch.Tensor) -> None:
        self.sample_weights[indices] = weights


class _Data:
    """A datamodule satisfying structvpr.protocols.TrainingData (no images: encoding is stood in)."""

    def __init__(self, tuples: Any) -> None:
        self.training_tuples = tuples

    def train_images_dataloader(self, ids: Any = None, key: str = "image") -> list[dict[str, Any]]:
        raise NotImplementedError("the stand-in task never asks for images")


def run_one(size: int, subepochs: int) -> dict[str, Any]:
    """Build one bank and time ``subepochs`` sub-epochs of mining + weighting (in this process)."""
    from structvpr.callbacks import HardNegativeMining, SampleWeighting
    from structvpr.data.datasets import TripletDataset

    rss0 = _rss_mib()  # after the imports
    start = time.perf_counter()
    bank = _Bank(size)
    dataset = TripletDataset(bank, num_negatives=10, pos_radius=10.0, neg_radius=25.0, cache_queries=1000)  # type: ignore[arg-type]
    tables_s = time.perf_counter() - start
    tables_mib = _rss_mib() - rss0
    task = _StandIn(dataset.num_training_queries)
    miner, weighting = HardNegativeMining(cache_negatives=1000), SampleWeighting(ranks="subepoch")
    trainer: Any = SimpleNamespace(
        datamodule=_Data(dataset),
        loggers=[],
        global_step=0,
        callbacks=[miner, weighting],
        strategy=SimpleNamespace(broadcast=lambda x, src=0: x),
        current_epoch=0,
    )
    miner.setup(trainer, task, "fit")  # type: ignore[arg-type]
    weighting.setup(trainer, task, "fit")  # type: ignore[arg-type]
    times, peaks, encoded = [], [], []
    for k in range(1, subepochs + 1):
        trainer.current_epoch = k
        before = task.images_encoded
        t0 = time.perf_counter()
        miner.mine(trainer, k)
        weighting.on_train_epoch_start(trainer, task)  # type: ignore[arg-type]
        times.append(time.perf_counter() - t0)
        peaks.append(_peak_mib())
        encoded.append(task.images_encoded - before)
    per_sub = float(np.median(times))
    return {
        "bank_images": size,
        "database": bank.num_database,
        "training_queries": dataset.num_training_queries,
        "coordinate_tables_seconds": round(tables_s, 2),
        "coordinate_tables_mib": round(tables_mib, 1),
        "seconds_per_subepoch": round(per_sub, 3),
        "subepochs_per_epoch": -(-dataset.num_training_queries // 1000),
        "seconds_per_epoch": round(per_sub * -(-dataset.num_training_queries // 1000), 1),
        "rss_after_imports_mib": round(rss0, 1),
        "peak_rss_mib": round(max(peaks), 1),
        "peak_rss_minus_tables_mib": round(max(peaks) - tables_mib - rss0, 1),
        "images_encoded_per_subepoch": int(np.median(encoded)),
        "rank_database_size": int(weighting.last_stats["weighting/rank_database_size"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 1_400_000])
    parser.add_argument("--subepochs", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/scale.json")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: one bank size
    ns = parser.parse_args()
    if ns.one is not None:
        print(json.dumps(run_one(ns.one, ns.subepochs)))
        return
    rows = []
    for size in ns.sizes:  # a fresh process per size, so each peak is its own
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(size), "--subepochs", str(ns.subepochs)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    by_size = {r["bank_images"]: r for r in rows}
    growth = {}
    if 100_000 in by_size and 1_400_000 in by_size:
        a, b = by_size[100_000], by_size[1_400_000]
        growth = {
            key: round(b[key] / a[key], 2)
            for key in ("seconds_per_subepoch", "peak_rss_minus_tables_mib", "peak_rss_mib", "coordinate_tables_mib")
        }
    result = {
        "machine": {"threads": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
        "settings": {
            "cities": CITIES,
            "descriptor_dim": DIM,
            "cache_queries": 1000,
            "cache_negatives": 1000,
            "num_negatives": 10,
            "subepochs_timed": ns.subepochs,
        },
        "rows": rows,
        "growth_100k_to_1.4M": growth,
    }
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result["growth_100k_to_1.4M"], indent=2))


if __name__ == "__main__":
    main()
