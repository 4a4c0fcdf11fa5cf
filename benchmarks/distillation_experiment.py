"""Does weighted distillation help? RGB baseline vs weighted vs uniform distillation, over seeds and label noise.

For every label-noise level and seed: generate a demo world with that seed and noise, train the
SegTeacher, the RGB baseline, the student distilled with StructVPR's sample weights, the
student distilled with all weights 1 (``SampleWeighting(uniform=True)``: the same groups are
computed and logged, only the weights differ) and, with ``--rows``, the student distilled with
the sample weights rescaled to mean 1 (``normalised``), then evaluate all of them on ``--split``.
Settings are chosen with ``--split val`` and frozen; the README quotes ``--split test``.

    python benchmarks/distillation_experiment.py --seeds 0 1 2 --label-noise 0 0.3 --split test
    python benchmarks/distillation_experiment.py --rows teacher baseline normalised --label-noise 0.3 --split test
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import yaml

from structvpr.data import synthetic
from structvpr.pipeline import best_checkpoint, fit_stage, test_stage

ROWS = ("teacher", "baseline", "weighted", "uniform")
#: Rows that distil, and the SampleWeighting options each sets (weights of mean 1 by default).
DISTILLED: dict[str, dict[str, bool]] = {"weighted": {}, "uniform": {"uniform": True},
                                         "unnormalised": {"normalize": False}}  # fmt: skip


def _weighting_config(config_dir: Path, out: Path, options: dict[str, bool]) -> Path:
    """distill.yaml, with these SampleWeighting init args set."""
    if not options:
        return config_dir / "distill.yaml"
    cfg = yaml.safe_load((config_dir / "distill.yaml").read_text())
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("SampleWeighting"):
            cb.setdefault("init_args", {}).update(options)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"distill_{'_'.join(options)}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_one(config_dir: Path, out: Path, seed: int, noise: float, split: str, overrides: list[str],
            rows: tuple[str, ...] = ROWS) -> dict:  # fmt: skip
    root = out / "world"
    if not root.exists():
        synthetic.generate(root, "demo", seed=seed, label_noise=noise)
    common = [f"--data.init_args.root={root}", f"--data.init_args.test_split={split}", f"--seed_everything={seed}",
              "--trainer.logger=false", "--trainer.enable_progress_bar=false", *overrides]  # fmt: skip
    results, ckpts, stats = {}, {}, {}
    for row in rows:
        if row in DISTILLED:
            config = _weighting_config(config_dir, out, DISTILLED[row])
        else:
            config = config_dir / f"{row}.yaml"
        extra = []
        if row in DISTILLED:
            extra = [f"--model.init_args.teacher_ckpt={ckpts['teacher']}",
                     f"--model.init_args.student_ckpt={ckpts['baseline']}"]  # fmt: skip
        cli = fit_stage(config, out / row, [*common, *extra])
        if row in DISTILLED:
            ckpts[row] = str(next(c for c in cli.trainer.callbacks if type(c).__name__ == "ExportStudent").path)
            weighting = next(c for c in cli.trainer.callbacks if type(c).__name__ == "SampleWeighting")
            stats[row] = weighting.last_stats
            test_config = config_dir / "baseline.yaml"
        else:
            ckpts[row] = best_checkpoint(cli)
            test_config = config
        results[row] = test_stage(test_config, ckpts[row], out / row / "test", common)
    return {"results": results, "weighting_stats": stats}


def collect_one(out: Path, rows: tuple[str, ...] = ROWS) -> dict | None:
    """Results of a finished run from its test reports (None when a stage is missing)."""
    results = {}
    for row in rows:
        reports = sorted((out / row / "test").rglob("test_results.json"))
        if not reports:
            return None
        results[row] = json.loads(reports[-1].read_text())
    return {"results": results, "weighting_stats": {}}


def summarise(runs: list[dict], rows: tuple[str, ...] = ROWS) -> dict:
    table = {}
    for noise in sorted({r["label_noise"] for r in runs}):
        sub = [r for r in runs if r["label_noise"] == noise]
        for row in rows:
            for key in ("R@1", "R@5", "R@10"):
                values = [100 * r["results"][row][key] for r in sub]
                table.setdefault(str(noise), {}).setdefault(row, {})[key] = {
                    "mean": round(statistics.mean(values), 2),
                    "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
                    "values": [round(v, 2) for v in values],
                }
    return table


def markdown(summary: dict, split: str) -> str:
    lines = [f"| label noise | model | R@1 ({split}) | R@5 | R@10 |", "|---|---|---|---|---|"]
    for noise, rows in summary.items():
        for row, vals in rows.items():
            cells = [f"{vals[k]['mean']:.1f} ± {vals[k]['std']:.1f}" for k in ("R@1", "R@5", "R@10")]
            lines.append(f"| {noise} | {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--label-noise", type=float, nargs="+", default=[0.0, 0.3])
    parser.add_argument("--split", default="val", choices=["val", "test"])
    parser.add_argument("--configs", default="lightning_configs/synthetic")
    parser.add_argument("--work", default="runs/experiment")
    parser.add_argument("--out", default=None, help="JSON result (default benchmarks/results/distillation_<split>.json)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=["teacher", "baseline", *DISTILLED],
                        help="models to train; distilled rows need teacher and baseline first")
    parser.add_argument("--collect", action="store_true",
                        help="train nothing: summarise the runs already finished under --work")
    parser.add_argument("overrides", nargs="*", help="extra CLI overrides for every stage")
    ns, rest = parser.parse_known_args()
    rows = tuple(ns.rows)
    if any(r in DISTILLED for r in rows) and rows[:2] != ("teacher", "baseline"):
        parser.error("--rows must start with teacher baseline when a distilled row follows")
    runs = []
    start = time.perf_counter()
    for noise in ns.label_noise:
        for seed in ns.seeds:
            out = Path(ns.work) / f"noise{noise}_seed{seed}"
            if ns.collect:
                result = collect_one(out, rows)
                if result is None:
                    print(f"{out}: not finished, left out of the summary")
                    continue
            else:
                result = run_one(Path(ns.configs), out, seed, noise, ns.split, [*ns.overrides, *rest], rows)
            runs.append({"label_noise": noise, "seed": seed, **result})
            print(json.dumps({"label_noise": noise, "seed": seed,
                              **{k: round(100 * v["R@1"], 1) for k, v in result["results"].items()}}), flush=True)
    summary = summarise(runs, rows)
    report = {"split": ns.split, "seeds": ns.seeds, "label_noise": ns.label_noise, "overrides": [*ns.overrides, *rest],
              "minutes": round((time.perf_counter() - start) / 60, 1), "summary": summary, "runs": runs}  # fmt: skip
    out = Path(ns.out or f"benchmarks/results/distillation_{ns.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown(summary, ns.split) + "\n")
    print(markdown(summary, ns.split))


if __name__ == "__main__":
    main()
