"""The demo pipeline (``structvpr demo``) over several seeds: the spread the single-seed table hides.

Seed S generates its own demo world (``synthetic_seed=S``) and trains every stage with
``seed_everything=S`` and ``data.seed=S``; the stages and configs are exactly the demo's.
Writes ``benchmarks/results/demo_seeds.json`` (per-seed tables and mean +- 95% CI).

    python benchmarks/demo_seeds.py --seeds 0 1 2 3 4 5 6 7 8 9
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from report_distillation import interval, paired

from structvpr.pipeline import run_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--work", default="runs/demo_seeds", type=Path)
    parser.add_argument("--out", default="benchmarks/results/demo_seeds.json", type=Path)
    parser.add_argument("--collect", action="store_true", help="train nothing: summarise the finished seeds")
    ns = parser.parse_args()
    runs = {}
    start = time.perf_counter()
    for seed in ns.seeds:
        out = ns.work / f"seed{seed}"
        if (out / "results.json").exists():  # resumable: a finished seed is kept
            runs[seed] = json.loads((out / "results.json").read_text())
            continue
        if ns.collect:
            continue
        overrides = [
            f"--data.init_args.root={ns.work / f'world{seed}'}",
            f"--data.init_args.synthetic_seed={seed}",
            f"--data.init_args.seed={seed}",
            f"--seed_everything={seed}",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--data.init_args.num_workers=0",
        ]
        runs[seed] = run_pipeline(out_dir=out, data_overrides=overrides)
    rows = list(next(iter(runs.values()))["results"])
    summary = {
        row: {k: interval([100 * r["results"][row][k] for r in runs.values()]) for k in ("R@1", "R@5", "R@10")} for row in rows
    }
    student, baseline = ([100 * r["results"][row]["R@1"] for r in runs.values()] for row in (rows[-1], rows[1]))
    report = {
        "what": "structvpr demo, world and training seed S, demo configs, one thread, no DataLoader workers",
        "seeds": sorted(runs),
        "summary_mean_ci95": summary,
        "student_minus_baseline_R@1": paired(student, baseline),
        "minutes": round((time.perf_counter() - start) / 60, 1),
        "runs": {str(s): r["results"] for s, r in runs.items()},
    }
    if ns.collect or len(runs) == len(ns.seeds):
        ns.out.write_text(json.dumps(report, indent=1))
    for row, vals in summary.items():
        print(row, {k: f"{v['mean']:.1f} +- {v['ci95']:.1f}" for k, v in vals.items()})


if __name__ == "__main__":
    main()
