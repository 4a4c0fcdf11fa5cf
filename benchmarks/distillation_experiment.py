"""Does the sample weighting help? A paired, many-seed experiment on the synthetic world.

Every (label noise, seed) pair is one *world*: a demo world generated with that seed and label
noise, its SegTeacher and RGB baseline, and the distilled students, which all start from that
baseline and distil from that teacher, so their differences are paired. The students differ
only in the ``SampleWeighting`` options:

- ``uniform``: every weight 1 (the groups are still computed and logged);
- ``weighted``: the paper's weights ``sigmoid(alpha (ln r_S - ln r_T))``, noisy queries 0;
- ``rescaled``: the same weights rescaled to mean 1 per sub-epoch (the library default);
- ``crossfit``: ``rescaled`` with teacher ranks from teachers that never trained on the query
  (two folds of the training queries, ``SampleWeighting(crossfit_teachers=...)``).

The experiment runs in phases, each resumable (a finished job leaves ``result.json`` and is
skipped) and shardable over processes (``--shard i/n``)::

    python benchmarks/distillation_experiment.py base   --shard 0/2   # teachers and baselines
    python benchmarks/distillation_experiment.py tune   --shard 0/2   # the val grid (tuning seeds)
    python benchmarks/distillation_experiment.py select               # chosen settings, by val
    python benchmarks/distillation_experiment.py final  --shard 0/2   # every variant at its choice
    python benchmarks/distillation_experiment.py report               # tables -> benchmarks/results

``benchmarks/run_distillation_experiment.sh`` runs them all with two processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from report_distillation import training_queries, write_report

from structvpr.data import synthetic
from structvpr.pipeline import best_checkpoint, fit_stage, test_stage

CONFIGS = Path("lightning_configs/synthetic")
NOISE = (0.0, 0.3, 0.6)
SEEDS = tuple(range(10))
#: Worlds whose val curves choose the settings (the other seeds never see the grid).
TUNE_NOISE, TUNE_SEEDS = 0.3, (0, 1, 2)
#: Epochs of each distillation (teacher and baseline keep the demo configs' 8).
DISTILL_EPOCHS = 4
#: The centre of the grid, and the values tried one factor at a time around it (lambda 3 was
#: added after 10, then the smallest value, came out best for every variant).
CENTRE = {"distill_weight": 30.0, "tau": 5, "alpha": 1.0}
GRID = {"distill_weight": (3.0, 10.0, 30.0, 100.0), "tau": (2, 5, 20), "alpha": (0.5, 1.0, 2.0)}
#: SampleWeighting options of each variant, and which settings it tunes.
VARIANTS: dict[str, dict[str, Any]] = {
    "uniform": {"options": {"uniform": True}, "tunes": ("distill_weight",)},
    "weighted": {"options": {"normalize": False}, "tunes": ("distill_weight", "tau", "alpha")},
    "rescaled": {"options": {"normalize": True}, "tunes": ("distill_weight", "tau", "alpha")},
    "crossfit": {"options": {"normalize": True}, "tunes": (), "like": "rescaled"},
}
COMMON = [
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.init_args.num_workers=0",
]


def world_dir(work: Path, noise: float, seed: int) -> Path:
    return work / f"noise{noise}_seed{seed}"


def setting_key(setting: dict[str, Any]) -> str:
    return f"lam{setting['distill_weight']:g}_tau{setting['tau']}_alpha{setting['alpha']:g}"


def grid_settings(variant: str) -> list[dict[str, Any]]:
    """The centre, then each tuned factor moved alone through its grid."""
    out = [dict(CENTRE)]
    for name in VARIANTS[variant]["tunes"]:
        for value in GRID[name]:
            setting = {**CENTRE, name: value}
            if setting not in out:
                out.append(setting)
    return out


def ensure_world(work: Path, noise: float, seed: int) -> Path:
    root = world_dir(work, noise, seed) / "world"
    if not root.exists():
        synthetic.generate(root, "demo", seed=seed, label_noise=noise, progress=False)
    return root


def data_args(root: Path, seed: int, split: str = "test") -> list[str]:
    return [f"--data.init_args.root={root}", f"--data.init_args.test_split={split}", f"--seed_everything={seed}", *COMMON]


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def val_best(cli: Any) -> float:
    score = cli.trainer.checkpoint_callback.best_model_score
    return float(score) if score is not None else float("nan")


def train_query_ranks(ckpt: str, root: Path, key: str = "image", max_rank: int = 100) -> dict[str, int]:
    """Rank of the first positive (within 25 m) of every training query over the training database.

    Encodes ``images`` (RGB, a StructVPRStudent checkpoint) or ``labels`` (a SegTeacher) with
    the model's own evaluation transform; keyed by the query's file name.
    """
    from structvpr import SegTeacher, StructVPRStudent
    from structvpr.bank import encode_loader
    from structvpr.data.datamodule import VPRDataModule
    from structvpr.metrics.recall import first_positive_rank

    cls = StructVPRStudent if key == "image" else SegTeacher
    model = cls.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    dm = VPRDataModule(root=str(root), image_size=(48, 96), batch_size=8, num_workers=0, synthetic_preset="demo")
    dm.setup("fit")
    bank = dm.training_tuples.bank
    loader = dm.train_images_dataloader(None, "label" if key != "image" else "image")
    desc = encode_loader(model.encoder, loader, "label" if key != "image" else "image")
    n_db = bank.num_database
    utm = bank.utm
    ranks, _ = first_positive_rank(desc[n_db:], desc[:n_db], max_rank, query_utm=utm[n_db:], database_utm=utm[:n_db], radius=25.0)
    return {Path(bank.records[n_db + i].path).name: int(r) for i, r in enumerate(ranks.tolist())}


def base_jobs(work: Path) -> list[tuple[float, int]]:
    worlds = [(TUNE_NOISE, s) for s in TUNE_SEEDS]
    worlds += [(n, s) for n in NOISE for s in SEEDS if (n, s) not in worlds]
    return worlds


def run_base(work: Path, noise: float, seed: int) -> None:
    """Teacher and baseline of one world (tested on val and test)."""
    root = ensure_world(work, noise, seed)
    for row in ("teacher", "baseline"):
        out = world_dir(work, noise, seed) / row
        if (out / "result.json").exists():
            continue
        start = time.perf_counter()
        config = CONFIGS / f"{row}.yaml"
        cli = fit_stage(config, out, data_args(root, seed))
        ckpt = best_checkpoint(cli)
        result = {"ckpt": ckpt, "val_best": val_best(cli), "test": test_stage(config, ckpt, out / "test", data_args(root, seed))}
        if row == "baseline":
            result["train_ranks"] = train_query_ranks(ckpt, root)
        result["seconds"] = round(time.perf_counter() - start, 1)
        write_json(out / "result.json", result)
        print(f"{out}: val R@1 {result['val_best']:.3f}, test R@1 {result['test']['R@1']:.3f}", flush=True)


def distill_config(out: Path, variant: str, setting: dict[str, Any], crossfit: list[str] | None = None) -> Path:
    """distill.yaml with this variant's SampleWeighting options and this setting."""
    cfg = yaml.safe_load((CONFIGS / "distill.yaml").read_text())
    cfg["trainer"]["max_epochs"] = DISTILL_EPOCHS
    cfg["model"]["init_args"]["distill_weight"] = float(setting["distill_weight"])
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("SampleWeighting"):
            args = cb.setdefault("init_args", {})
            args.update(VARIANTS[variant]["options"], tau=int(setting["tau"]), alpha=float(setting["alpha"]))
            if crossfit:
                args["crossfit_teachers"] = crossfit
    out.mkdir(parents=True, exist_ok=True)
    path = out / "distill.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def partition_record(
    history: list[dict[str, Any]], names: list[str], truth: dict[str, dict[str, Any]], tau: int
) -> dict[str, Any]:
    """Per sub-epoch: group sizes and the noisy group's precision and recall against the manifest."""
    from structvpr.callbacks.weighting import GROUP_NAMES, partition

    epochs = []
    for h in history:
        groups = partition(torch.from_numpy(h["teacher_ranks"]), torch.from_numpy(h["student_ranks"]), tau).numpy()
        corrupted = np.array([truth[names[i]]["corrupted"] for i in h["image_ids"]])
        noisy = groups == 0
        hit = int((noisy & corrupted).sum())
        epochs.append(
            {
                "subepoch": int(h["subepoch"]),
                **{f"{g}_count": int((groups == k).sum()) for k, g in enumerate(GROUP_NAMES)},
                "corrupted": int(corrupted.sum()),
                "noisy_corrupted": hit,
                "precision": hit / int(noisy.sum()) if noisy.any() else None,
                "recall": hit / int(corrupted.sum()) if corrupted.any() else None,
                "teacher_rank1": int((h["teacher_ranks"] == 1).sum()),
                "mean_weight": float(h["weights"].mean()),
            }
        )
    first = history[0]
    groups0 = partition(torch.from_numpy(first["teacher_ranks"]), torch.from_numpy(first["student_ranks"]), tau)
    return {
        "epochs": epochs,
        "first_groups": {names[i]: int(g) for i, g in zip(first["image_ids"], groups0.tolist())},
        "first_teacher_ranks": {names[i]: int(r) for i, r in zip(first["image_ids"], first["teacher_ranks"])},
    }


def run_variant(work: Path, noise: float, seed: int, variant: str, setting: dict[str, Any]) -> None:
    """One distilled student of one world: fit (val picks the epoch), test, partition diagnostics."""
    world = world_dir(work, noise, seed)
    out = world / variant / setting_key(setting)
    if (out / "result.json").exists():
        return
    start = time.perf_counter()
    root = ensure_world(work, noise, seed)
    base = {row: read_json(world / row / "result.json") for row in ("teacher", "baseline")}
    crossfit = crossfit_teachers(work, noise, seed) if variant == "crossfit" else None
    config = distill_config(out, variant, setting, crossfit)
    cli = fit_stage(
        config,
        out,
        [
            *data_args(root, seed),
            f"--model.init_args.teacher_ckpt={base['teacher']['ckpt']}",
            f"--model.init_args.student_ckpt={base['baseline']['ckpt']}",
        ],
    )
    exporter = next(c for c in cli.trainer.callbacks if type(c).__name__ == "ExportStudent")
    weighting = next(c for c in cli.trainer.callbacks if type(c).__name__ == "SampleWeighting")
    bank = cli.datamodule.training_tuples.bank
    names = [Path(r.path).name for r in bank.records]
    truth = training_queries(root)
    result = {
        "variant": variant,
        "setting": setting,
        "val_best": val_best(cli),
        "test": test_stage(CONFIGS / "baseline.yaml", str(exporter.path), out / "test", data_args(root, seed)),
        "train_ranks": train_query_ranks(str(exporter.path), root),
        "partition": partition_record(weighting.history, names, truth, int(setting["tau"])),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(out / "result.json", result)
    print(f"{out}: val R@1 {result['val_best']:.3f}, test R@1 {result['test']['R@1']:.3f}", flush=True)


def crossfit_teachers(work: Path, noise: float, seed: int, folds: int = 2) -> list[str]:
    """The world's fold teachers (teacher ``k`` trained without fold ``k`` of the training queries)."""
    world = world_dir(work, noise, seed)
    root = ensure_world(work, noise, seed)
    paths = []
    for k in range(folds):
        out = world / f"teacher_fold{k}"
        if not (out / "result.json").exists():
            cli = fit_stage(
                CONFIGS / "teacher.yaml",
                out,
                [*data_args(root, seed), f"--data.init_args.query_folds={folds}", f"--data.init_args.held_out_fold={k}"],
            )
            write_json(out / "result.json", {"ckpt": best_checkpoint(cli), "val_best": val_best(cli)})
        paths.append(read_json(out / "result.json")["ckpt"])
    return paths


def tune_jobs() -> list[tuple[float, int, str, dict[str, Any]]]:
    return [(TUNE_NOISE, seed, v, s) for seed in TUNE_SEEDS for v in VARIANTS if VARIANTS[v]["tunes"] for s in grid_settings(v)]


def select(work: Path) -> dict[str, Any]:
    """Per variant, each tuned factor's value with the best mean val R@1 over the tuning seeds."""
    chosen, curves = {}, {}
    for variant, spec in VARIANTS.items():
        if not spec["tunes"]:
            continue
        setting = dict(CENTRE)
        curves[variant] = {}
        for factor in spec["tunes"]:
            curve = {}
            for value in GRID[factor]:
                trial = {**CENTRE, factor: value}
                scores = [
                    read_json(world_dir(work, TUNE_NOISE, s) / variant / setting_key(trial) / "result.json")["val_best"]
                    for s in TUNE_SEEDS
                ]
                curve[str(value)] = {"mean": statistics.mean(scores), "values": scores}  # val R@1 in %
            curves[variant][factor] = curve
            # Best mean; a tie keeps the centre.
            best = max(curve.items(), key=lambda kv: (round(kv[1]["mean"], 6), kv[0] == str(CENTRE[factor])))
            setting[factor] = type(CENTRE[factor])(float(best[0]))
        chosen[variant] = setting
    for variant, spec in VARIANTS.items():
        if "like" in spec:
            chosen[variant] = dict(chosen[spec["like"]])
    report = {
        "tune_noise": TUNE_NOISE,
        "tune_seeds": list(TUNE_SEEDS),
        "centre": CENTRE,
        "grid": GRID,
        "chosen": chosen,
        "val_curves": curves,
    }
    write_json(work / "chosen.json", report)
    return report


def final_jobs(work: Path, crossfit_noise: tuple[float, ...]) -> list[tuple[float, int, str, dict[str, Any]]]:
    chosen = read_json(work / "chosen.json")["chosen"]
    jobs = [(n, s, v, chosen[v]) for n in NOISE for s in SEEDS for v in VARIANTS if v != "crossfit"]
    jobs += [(n, s, "crossfit", chosen["crossfit"]) for n in crossfit_noise for s in SEEDS]
    return jobs


def shard(items: list[Any], spec: str) -> list[Any]:
    i, n = map(int, spec.split("/"))
    return items[i::n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["base", "tune", "select", "final", "report"])
    parser.add_argument("--work", default="runs/weighting", type=Path)
    parser.add_argument("--shard", default="0/1", help="i/n: this process runs every n-th job from the i-th")
    parser.add_argument(
        "--crossfit-noise", type=float, nargs="*", default=[0.3], help="label-noise levels that also run the cross-fitted variant"
    )
    parser.add_argument(
        "--out", default="benchmarks/results/distillation_experiment", type=Path, help="report: writes OUT.json and OUT.md"
    )
    ns = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("WANDB_MODE", "offline")
    if ns.phase == "base":
        for noise, seed in shard(base_jobs(ns.work), ns.shard):
            run_base(ns.work, noise, seed)
    elif ns.phase == "tune":
        for job in shard(tune_jobs(), ns.shard):
            run_variant(ns.work, *job)
    elif ns.phase == "select":
        print(json.dumps(select(ns.work)["chosen"], indent=1))
    elif ns.phase == "final":
        for job in shard(final_jobs(ns.work, tuple(ns.crossfit_noise)), ns.shard):
            run_base(ns.work, job[0], job[1])
            run_variant(ns.work, *job)
    else:
        write_report(ns.work, ns.out)


if __name__ == "__main__":
    main()
