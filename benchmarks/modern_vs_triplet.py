"""The modern recipe (place batches, multi-similarity loss) against the triplet recipe at the same training wall time.

Per seed ``s``: the demo world generated with seed ``s``; the triplet baseline
(``lightning_configs/synthetic/baseline.yaml``: mined triplets, 8 sub-epochs) is trained and its
training wall time ``T`` (the fit loop, mining and validation included) measured by Lightning's
``Timer``; then the modern recipe (``lightning_configs/modern/synthetic/baseline.yaml``, the same small
CNN + GeM and input size) trains until its own fit loop has run ``T`` seconds. Each is selected
by its best val R@1 and tested on the test split (160 queries). Both use ``seed_everything=s``
and ``data.seed=s``. Writes JSON with every run and the paired differences.

    python benchmarks/modern_vs_triplet.py [--seeds 0 1 2] [--out benchmarks/results/modern_vs_triplet.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_lightning.callbacks import Timer
from scipy import stats

from structvpr.data import synthetic
from structvpr.lightning_cli import cli_main

ROOT = Path(__file__).resolve().parents[1]


def _run(config: str, world: Path, seed: int, out: Path, extra: list[str], budget: float | None) -> dict[str, Any]:
    timer = Timer(duration={"seconds": budget} if budget is not None else None, interval="step")
    args = [
        "--config",
        str(ROOT / config),
        f"--seed_everything={seed}",
        f"--data.init_args.root={world}",
        f"--data.init_args.seed={seed}",
        f"--trainer.default_root_dir={out}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        *extra,
    ]
    cli = cli_main(args, run=False)
    cli.trainer.callbacks.append(timer)
    timer_index = len(cli.trainer.callbacks) - 1
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = cli.trainer.callbacks[timer_index].time_elapsed("train")
    best = cli.trainer.checkpoint_callback.best_model_path
    test = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best, verbose=False)[0]
    return {
        "train_seconds": round(seconds, 1),
        "epochs": cli.trainer.current_epoch,
        "steps": cli.trainer.global_step,
        "best_val_R@1": round(float(cli.trainer.checkpoint_callback.best_model_score), 2),
        "test": {k.removeprefix("test/"): round(float(v), 2) for k, v in test.items() if k.startswith("test/R@")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=Path("runs/modern_vs_triplet"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/modern_vs_triplet.json")
    ns = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("WANDB_MODE", "offline")
    runs: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    for seed in ns.seeds:
        world = ns.work / f"world{seed}"
        if not (world / "manifest.json").exists():
            synthetic.generate(world, "demo", seed)
        triplet = _run("lightning_configs/synthetic/baseline.yaml", world, seed, ns.work / f"triplet{seed}", [], None)
        modern = _run(
            "lightning_configs/modern/synthetic/baseline.yaml",
            world,
            seed,
            ns.work / f"modern{seed}",
            ["--trainer.max_epochs=1000", "--trainer.check_val_every_n_epoch=2"],
            triplet["train_seconds"],
        )
        runs[str(seed)] = {"triplet": triplet, "modern": modern}
        print(json.dumps({seed: runs[str(seed)]}))
    diffs = [r["modern"]["test"]["R@1"] - r["triplet"]["test"]["R@1"] for r in runs.values()]
    n = len(diffs)
    half = float(stats.t.ppf(0.975, n - 1) * np.std(diffs, ddof=1) / np.sqrt(n)) if n > 1 else None
    out = {
        "what": "modern recipe (P x K place batches, multi-similarity loss and miner) vs triplet recipe, same model, "
        "same training wall time (the triplet's fit loop, mining and validation included), best val R@1, "
        "test split of the demo world",
        "world": "demo preset (160 test queries: one query is 0.6 R@1 points)",
        "model": "small CNN + GeM, 48x96 inputs, 1 thread",
        "machine": platform.processor() or platform.machine(),
        "runs": runs,
        "paired_R@1_modern_minus_triplet": {
            "mean": round(float(np.mean(diffs)), 2),
            "ci95": None if half is None else round(half, 2),
            "per_seed": [round(d, 2) for d in diffs],
        },
        "wall_seconds": round(time.perf_counter() - start),
    }
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["paired_R@1_modern_minus_triplet"]))


if __name__ == "__main__":
    main()
