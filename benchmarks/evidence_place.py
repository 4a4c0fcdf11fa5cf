"""Structure distillation on the modern recipe: budget-matched, paired comparisons on the powered synthetic testbed.

The design of ``benchmarks/evidence.py`` (its worlds, selection and statistics) with the place-batch recipe
(``lightning_configs/modern/synthetic/{teacher,baseline,distill}.yaml``: P x K place batches, the
multi-similarity loss and miner, AdamW; the small CNN + GeM, which fits this machine). Every seed ``s``
is one world: the ``powered`` preset (500 val and 2,000 test queries on streets never trained on) at
label noise 0.3, trained with ``seed_everything=s`` and ``data.seed=s``.

Per world: a :class:`~structvpr.tasks.PlaceTeacher`, and one RGB baseline run of
``BASE_EPOCHS + CONT_EPOCHS`` epochs keeping every epoch's checkpoint. Every continuation row starts
from that run's checkpoint at epoch ``BASE_EPOCHS - 1`` and trains ``CONT_EPOCHS`` more epochs with
:class:`~structvpr.tasks.PlaceDistillation`; every row (the full-budget baseline included) is the epoch
with the best val R@1 among the last ``CONT_EPOCHS``, then tested. Rows:

- ``baseline_full``: the baseline run itself over those epochs;
- ``lambda0``: the continuation with ``distill_weight=0`` (the same steps and restart, no teacher);
- ``uniform``: distillation from the world's teacher, every weight 1;
- ``weighted``: StructVPR's per-image weights (:class:`~structvpr.callbacks.PlaceWeighting`, mean 1 per window);
- ``random_teacher``: uniform distillation from a PlaceTeacher with random weights.

``lambda`` is chosen once, by val R@1 on the tuning world (seed 100), among ``LAMBDAS``; controls use it.
Each job is resumable (a finished one leaves ``result.json``) and shardable (``--shard i/n``)::

    python benchmarks/evidence_place.py tune                      # lambda grid on the tuning world (one process)
    python benchmarks/evidence_place.py prepare --worlds 0-7 --shard 0/2   # teachers and baselines, meanwhile
    python benchmarks/evidence_place.py rows --worlds 0-7 --shard 0/2
    python benchmarks/evidence_place.py report                    # -> benchmarks/results/evidence_place.{json,md}
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from distillation_experiment import read_json, shard, write_json
from evidence import COMMON, ensure_world, selected, world_dir, world_range
from report_distillation import interval
from report_evidence import paired

from structvpr.pipeline import best_checkpoint, fit_stage, test_stage

CONFIGS = Path("lightning_configs/modern/synthetic")
TEACHER_EPOCHS = 20
BASE_EPOCHS, CONT_EPOCHS = 50, 15
TUNE_SEED = 100
LAMBDAS = (1.0, 3.0, 10.0)
ROWS = ("lambda0", "uniform", "weighted", "random_teacher")
COMPARISONS = (
    ("lambda0", "baseline_full", "the restart with the students' steps, no teacher, over the full-budget baseline"),
    ("uniform", "lambda0", "the teacher's targets over the same steps without them"),
    ("uniform", "random_teacher", "a trained teacher over a random one"),
    ("weighted", "uniform", "StructVPR's per-image weights over uniform"),
    ("uniform", "baseline_full", "distillation over the full-budget baseline"),
)


def data_args(root: Path, seed: int) -> list[str]:
    return [
        f"--data.init_args.root={root}",
        f"--seed_everything={seed}",
        f"--data.init_args.seed={seed}",
        "--data.init_args.synthetic_preset=null",
        *COMMON,
    ]


def _config(base: str, out: Path, epochs: int, keep_every_epoch: bool = False, weighting: bool = False) -> Path:
    cfg = yaml.safe_load((CONFIGS / f"{base}.yaml").read_text())
    cfg["trainer"]["max_epochs"] = epochs
    callbacks = [c for c in cfg["trainer"]["callbacks"] if weighting or not c["class_path"].endswith("PlaceWeighting")]
    if keep_every_epoch:
        for c in callbacks:
            if c["class_path"].endswith("SubEpochCheckpoint"):
                c["init_args"].update(filename="epoch{epoch:02d}", save_top_k=-1)
    callbacks.append({"class_path": "evidence.ValCurve", "init_args": {"path": str(out / "val_curve.json")}})
    cfg["trainer"]["callbacks"] = callbacks
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{base}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def random_teacher(work: Path, seed: int) -> str:
    """A PlaceTeacher checkpoint with random weights (seeded), loadable like a trained one."""
    from structvpr.tasks import PlaceTeacher

    path = world_dir(work, seed) / "random_place_teacher.ckpt"
    if not path.exists():
        torch.manual_seed(10_000 + seed)
        model = PlaceTeacher(num_groups=5, trunk="simple", aggregator="gem")
        state = {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": pl.__version__,
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
    return str(path)


def run_teacher(work: Path, seed: int) -> dict[str, Any]:
    out = world_dir(work, seed) / "place_teacher"
    if not (out / "result.json").exists():
        root, start = ensure_world(work, seed), time.perf_counter()
        config = _config("teacher", out, TEACHER_EPOCHS)
        ckpt = best_checkpoint(fit_stage(config, out, data_args(root, seed)))
        test = test_stage(config, ckpt, out / "test", data_args(root, seed))
        result = {"ckpt": ckpt, "val_curve": read_json(out / "val_curve.json"), "test": test}
        write_json(out / "result.json", {**result, "seconds": round(time.perf_counter() - start, 1)})
        print(f"{out}: teacher test R@1 {100 * test['R@1']:.1f}", flush=True)
    return read_json(out / "result.json")


def run_baseline(work: Path, seed: int) -> dict[str, Any]:
    out = world_dir(work, seed) / "place_baseline"
    if not (out / "result.json").exists():
        root, start = ensure_world(work, seed), time.perf_counter()
        config = _config("baseline", out, BASE_EPOCHS + CONT_EPOCHS, keep_every_epoch=True)
        fit_stage(config, out, data_args(root, seed))
        curve = read_json(out / "val_curve.json")
        full = selected(curve, BASE_EPOCHS, BASE_EPOCHS + CONT_EPOCHS - 1)
        ckpt = str(out / "checkpoints" / f"epoch{int(full['epoch']):02d}.ckpt")
        result = {
            "val_curve": curve,
            "start_ckpt": str(out / "checkpoints" / f"epoch{BASE_EPOCHS - 1:02d}.ckpt"),
            "baseline_full": {
                "epoch": int(full["epoch"]),
                "val": full["val/R@1"],
                "test": test_stage(config, ckpt, out / "test", data_args(root, seed)),
            },
            "seconds": round(time.perf_counter() - start, 1),
        }
        write_json(out / "result.json", result)
        print(f"{out}: full-budget test R@1 {100 * result['baseline_full']['test']['R@1']:.1f}", flush=True)
    return read_json(out / "result.json")


def run_row(work: Path, seed: int, row: str, lam: float) -> dict[str, Any]:
    out = world_dir(work, seed) / f"place_{row}" / f"lam{lam:g}"
    if (out / "result.json").exists():
        return read_json(out / "result.json")
    root, start = ensure_world(work, seed), time.perf_counter()
    teacher, base = run_teacher(work, seed), run_baseline(work, seed)
    config = _config("distill", out, CONT_EPOCHS, weighting=row == "weighted")
    args = [
        f"--model.init_args.teacher_ckpt={random_teacher(work, seed) if row == 'random_teacher' else teacher['ckpt']}",
        f"--model.init_args.student_ckpt={base['start_ckpt']}",
        f"--model.init_args.distill_weight={0.0 if row == 'lambda0' else lam}",
        "--model.init_args.warmup_steps=0",
    ]
    cli = fit_stage(config, out, [*data_args(root, seed), *args])
    curve = read_json(out / "val_curve.json")
    best = selected(curve, 0, CONT_EPOCHS - 1)
    ckpt = best_checkpoint(cli)
    test = test_stage(config, ckpt, out / "test", data_args(root, seed))
    result = {"row": row, "lambda": lam, "epoch": int(best["epoch"]), "val": best["val/R@1"], "val_curve": curve, "test": test}
    write_json(out / "result.json", {**result, "seconds": round(time.perf_counter() - start, 1)})
    print(f"{out}: test R@1 {100 * test['R@1']:.1f} (val {best['val/R@1']:.1f} at epoch {best['epoch']})", flush=True)
    return result


def chosen_lambda(work: Path, fixed: float | None = None) -> float:
    """The lambda of uniform distillation with the best val R@1 on the tuning world (ties: the smallest).

    ``fixed`` (``--lambda``) skips the tuning world's files: for a rerun with a lambda chosen by an
    earlier ``tune`` whose work folder is gone; the report then says so instead of quoting the grid.
    """
    if fixed is not None:
        return fixed
    scores = {
        lam: read_json(world_dir(work, TUNE_SEED) / "place_uniform" / f"lam{lam:g}" / "result.json")["val"] for lam in LAMBDAS
    }
    return max(LAMBDAS, key=lambda lam: (scores[lam], -lam))


def report(work: Path, worlds: tuple[int, ...], out_prefix: Path, fixed: float | None = None) -> dict[str, Any]:
    lam = chosen_lambda(work, fixed)
    table: dict[str, dict[str, float]] = {}
    for seed in worlds:
        base = world_dir(work, seed) / "place_baseline" / "result.json"
        rows = {"baseline_full": read_json(base)["baseline_full"]} if base.exists() else {}
        teacher = world_dir(work, seed) / "place_teacher" / "result.json"
        if teacher.exists():
            rows["teacher"] = read_json(teacher)
        for row in ROWS:
            path = world_dir(work, seed) / f"place_{row}" / f"lam{lam:g}" / "result.json"
            if path.exists():
                rows[row] = read_json(path)
        if {"baseline_full", *ROWS} <= set(rows):
            table[str(seed)] = {name: 100 * r["test"]["R@1"] for name, r in rows.items()}
    done = sorted(table, key=int)
    out: dict[str, Any] = {
        "design": {
            "preset": "powered",
            "label_noise": 0.3,
            "teacher_epochs": TEACHER_EPOCHS,
            "base_epochs": BASE_EPOCHS,
            "cont_epochs": CONT_EPOCHS,
            "lambda": lam,
            "lambda_fixed_by_flag": fixed is not None,
            "lambdas_tried": list(LAMBDAS),
        },
        "tuning_val_R@1": None
        if fixed is not None
        else {
            f"{x:g}": read_json(world_dir(work, TUNE_SEED) / "place_uniform" / f"lam{x:g}" / "result.json")["val"]
            for x in LAMBDAS
        },
        "worlds": [int(s) for s in done],
        "per_world_test_R@1": {s: {k: round(v, 2) for k, v in table[s].items()} for s in done},
        "rows": {
            name: interval([table[s][name] for s in done])
            for name in ("teacher", "baseline_full", *ROWS)
            if all(name in table[s] for s in done)
        },
        "comparisons": {},
    }
    for a, b, what in COMPARISONS:
        out["comparisons"][f"{a} - {b}"] = {"what": what, **paired([table[s][a] for s in done], [table[s][b] for s in done])}
    lines = [
        "# Structure distillation on the modern recipe (place batches, multi-similarity loss), synthetic testbed",
        "",
        f"Powered preset (2,000 test queries), label noise 0.3, {len(done)} worlds; teacher {TEACHER_EPOCHS} epochs, "
        f"baseline {BASE_EPOCHS} + {CONT_EPOCHS} epochs, every row selected by val R@1 over the last {CONT_EPOCHS}; "
        f"lambda {lam:g} "
        + (
            "(fixed with --lambda, from an earlier tuning run; its files are not in this work folder)."
            if fixed is not None
            else f"(chosen on the tuning world's val among {', '.join(f'{x:g}' for x in LAMBDAS)})."
        ),
        "",
        "| row | test R@1 (mean +- 95% t) |",
        "|---|---|",
        *[f"| {name} | {r['mean']:.1f} +- {r['ci95']:.1f} |" for name, r in out["rows"].items()],
        "",
        "| paired difference | mean +- 95% t | wins / losses | MDD (alpha 0.05, power 0.8) |",
        "|---|---|---|---|",
        *[
            f"| {k} | {v['mean']:+.1f} +- {v['ci95']:.1f} | {v['wins']} / {v['losses']} | {v['mdd']:.1f} |"
            for k, v in out["comparisons"].items()
        ],
        "",
    ]
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    write_json(out_prefix.with_suffix(".json"), out)
    out_prefix.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["prepare", "tune", "rows", "report"])
    parser.add_argument("--work", default="work/evidence")
    parser.add_argument("--worlds", default="0-7")
    parser.add_argument("--shard", default="0/1")
    parser.add_argument("--out", default="benchmarks/results/evidence_place")
    parser.add_argument("--lambda", dest="lam", type=float, default=None, help="skip the tuning world: use this lambda")
    ns = parser.parse_args()
    work = Path(ns.work)
    if ns.phase == "prepare":  # teachers and baselines, one world per job
        for seed in shard(list(world_range(ns.worlds)), ns.shard):
            run_teacher(work, seed)
            run_baseline(work, seed)
    elif ns.phase == "tune":  # one process: the lambdas share the tuning world's teacher and baseline
        for lam in LAMBDAS:
            run_row(work, TUNE_SEED, "uniform", lam)
    elif ns.phase == "rows":  # whole worlds per shard, so two shards never build one world's teacher
        lam = chosen_lambda(work, ns.lam)
        for seed in shard(list(world_range(ns.worlds)), ns.shard):
            for row in ROWS:
                run_row(work, seed, row, lam)
    else:
        report(work, world_range(ns.worlds), Path(ns.out), ns.lam)


if __name__ == "__main__":
    main()
