"""Does the teacher's structure help? Budget-matched, paired comparisons on the powered synthetic testbed.

Every seed ``s`` is one *world*: the ``powered`` preset (the demo's 300 training queries; 500 val
and 2,000 test queries on streets never trained on) generated with seed ``s`` at label noise 0.3,
trained with ``seed_everything=s`` and ``data.seed=s`` (sub-epoch permutations and augmentation
draws), so a seed varies the world, the training and the data order together.

Per world: a SegTeacher, and one RGB baseline run of ``BASE_EPOCHS + CONT_EPOCHS`` epochs that keeps
every epoch's checkpoint. Every continuation row starts from that run's checkpoint at epoch
``BASE_EPOCHS - 1`` and trains ``CONT_EPOCHS`` more epochs; every RGB row (the full-budget baseline
included) is then selected the same way, as the epoch with the best val R@1 among the last
``CONT_EPOCHS``, and tested. So every compared row has the same number of optimisation steps and
the same model selection. The rows:

- ``baseline_full``: the baseline run itself over those epochs (no restart);
- ``lambda0``: the continuation with ``distill_weight=0`` (the students' steps and restart, no teacher);
- ``uniform``: distillation from the world's teacher, every weight 1;
- ``paper``: StructVPR's weights as published (``normalize=False``), per query;
- ``meanone``: the same rescaled to mean 1 per sub-epoch (the library default), per query;
- ``meanone_image``: mean-1 weights per image (``SampleWeighting(unit='image')``);
- ``oracle``: per-image weight 0 for every image whose label map the manifest marks corrupted (mean 1
  over the sub-epoch's images): what a perfect noise detector could gain;
- ``random_teacher``: uniform distillation from a SegTeacher with random weights;
- ``self_distill``: uniform distillation from the RGB baseline's start checkpoint on RGB
  (``teacher_input='image'``): distillation as such, without label maps.

One more row answers whether a student that must move out of the baseline's descriptor space
transfers less than one distilled from the start:

- ``scratch``: uniform distillation (uniform's lambda) from random weights over the baseline's
  whole budget (``BASE_EPOCHS + CONT_EPOCHS`` epochs), selected like ``baseline_full`` (best val
  R@1 among the last ``CONT_EPOCHS`` epochs): budget-matched with ``baseline_full``.

Phases, each resumable (a finished job leaves ``result.json``) and shardable (``--shard i/n``)::

    python benchmarks/evidence.py prepare --shard 0/2              # teacher and baseline of the tuning world
    python benchmarks/evidence.py tune    --shard 0/2              # the val grid on the tuning world
    python benchmarks/evidence.py select                           # the chosen settings, by val
    python benchmarks/evidence.py rows    --shard 0/2              # confirmation, spread and final worlds
    python benchmarks/evidence.py report                           # -> benchmarks/results/evidence.{json,md}

More worlds for a few rows (``--worlds``, ``--only``), pooled with an earlier report's worlds::

    python benchmarks/evidence.py rows --worlds 5-10 --only lambda0,uniform,self_distill,scratch --shard 0/2
    python benchmarks/evidence.py extend --previous benchmarks/results/evidence.json \
        --out benchmarks/results/evidence_extended

``benchmarks/run_evidence.sh`` runs them all with two processes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from distillation_experiment import read_json, shard, write_json

from structvpr.data import synthetic
from structvpr.pipeline import best_checkpoint, fit_stage, test_stage

CONFIGS = Path("lightning_configs/synthetic")
PRESET, NOISE = "powered", 0.3
TEACHER_EPOCHS = 10
#: The RGB baseline's epochs before the students branch off (its val R@1 rises by about 0.5 a
#: epoch there, against 3 at epoch 8, where the demo stops), and the epochs every row then trains.
BASE_EPOCHS, CONT_EPOCHS = 24, 6
TUNE_SEED, CONFIRM_SEED = 100, 101
#: Training seeds on the tuning world for the run-to-run spread (the first is the tuning run).
SPREAD_SEEDS = (100, 1001, 1002)
FINAL_SEEDS = tuple(range(8))
#: The val grid (a full grid per variant); controls use uniform's lambda.
GRID: dict[str, dict[str, tuple[Any, ...]]] = {
    "uniform": {"distill_weight": (3.0, 10.0, 30.0)},
    "paper": {"distill_weight": (10.0, 30.0), "tau": (2, 5), "alpha": (0.5, 2.0)},
    "meanone": {"distill_weight": (10.0, 30.0), "tau": (2, 5), "alpha": (0.5, 2.0)},
    "meanone_image": {"distill_weight": (10.0, 30.0), "tau": (2, 5), "alpha": (0.5, 2.0)},
}
DEFAULT = {"distill_weight": 0.0, "tau": 5, "alpha": 1.0}
#: SampleWeighting options per row (None: no weighting callback); "lambda_of": the row whose lambda it uses.
ROWS: dict[str, dict[str, Any]] = {
    "lambda0": {"weighting": None},
    "uniform": {"weighting": {"uniform": True}},
    "paper": {"weighting": {"normalize": False}},
    "meanone": {"weighting": {"normalize": True}},
    "meanone_image": {"weighting": {"normalize": True, "unit": "image"}},
    "oracle": {"weighting": None, "oracle": True, "lambda_of": "uniform"},
    "random_teacher": {"weighting": {"uniform": True}, "teacher": "random", "lambda_of": "uniform"},
    "self_distill": {"weighting": {"uniform": True}, "teacher": "self", "lambda_of": "uniform"},
}
#: Rows outside ROWS (run by ``rows --only``): see the module docstring.
EXTRA_ROWS: dict[str, dict[str, Any]] = {"scratch": {"weighting": {"uniform": True}, "lambda_of": "uniform"}}
COMMON = [
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.init_args.num_workers=0",
]


# -- callbacks the experiment adds to the configs (imported by class_path "evidence.<name>") ---------
class ValCurve(pl.Callback):
    """Writes every epoch's val Recall@N to a JSON list (after validation, at the epoch's end)."""

    def __init__(self, path: str) -> None:
        self.path, self.points = Path(path), []  # type: list[dict[str, float]]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {k: round(float(v), 3) for k, v in trainer.callback_metrics.items() if k.startswith("val/R@")}
        if metrics:
            self.points.append({"epoch": trainer.current_epoch, **metrics})
            write_json(self.path, self.points)


def _manifest_corruption(root: str) -> dict[str, bool]:
    """Training file name -> whether its label map is corrupted (``manifest.json``)."""
    images = json.loads((Path(root) / "manifest.json").read_text())["images"]
    return {Path(m["path"]).name: m["label_corruption"] is not None for m in images if m["split"] == "train"}


def _bank_corruption(trainer: pl.Trainer, root: str) -> np.ndarray:
    flags = _manifest_corruption(root)
    bank = trainer.datamodule.training_tuples.bank  # type: ignore[attr-defined]
    return np.array([flags[Path(r.path).name] for r in bank.records])


class OracleWeighting(pl.Callback):
    """Per-image weight 0 for every training image whose label map is corrupted, the rest mean 1 per sub-epoch."""

    def __init__(self, world: str) -> None:
        self.world = world

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        corrupted = _bank_corruption(trainer, self.world)
        ds = trainer.datamodule.training_tuples  # type: ignore[attr-defined]
        table = ds.tuples.numpy()
        ids = np.union1d(table[:, 1:].ravel(), ds.query_image_index(table[:, 0]))
        clean = ~corrupted[ids]
        weights = np.where(clean, len(ids) / max(int(clean.sum()), 1), 0.0)
        pl_module.set_image_weights(torch.from_numpy(ids), torch.from_numpy(weights).float())


class TargetAudit(pl.Callback):
    """Per sub-epoch: share of the distillation mass (``w_q * v_i`` over every tuple image) on corrupted maps.

    Runs after the weighting callbacks (appended last), so it sees the weights the sub-epoch trains with.
    """

    def __init__(self, world: str, path: str) -> None:
        self.world, self.path, self.records = world, Path(path), []  # type: ignore[var-annotated]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        corrupted = _bank_corruption(trainer, self.world)
        ds = trainer.datamodule.training_tuples  # type: ignore[attr-defined]
        table = ds.tuples.numpy()
        images = np.concatenate([ds.query_image_index(table[:, :1]), table[:, 1:]], axis=1)  # (S, 2 + M) bank ids
        w_q = pl_module.sample_weights[torch.from_numpy(table[:, 0])].cpu().numpy()[:, None]
        v = pl_module.image_weights[torch.from_numpy(images)].cpu().numpy()
        mass = w_q * v
        bad = corrupted[images]
        self.records.append(
            {
                "subepoch": int(ds.subepoch),
                "corrupted_share_of_targets": round(float(bad.mean()), 4),
                "corrupted_share_of_mass": round(float(mass[bad].sum() / max(mass.sum(), 1e-12)), 4),
                "query_targets_corrupted": round(float(bad[:, 0].mean()), 4),
                "database_targets_corrupted_per_tuple": round(float(bad[:, 1:].sum(1).mean()), 3),
            }
        )
        write_json(self.path, self.records)


# -- helpers ----------------------------------------------------------------------------------------
def world_dir(work: Path, seed: int) -> Path:
    return work / f"world{seed}"


def ensure_world(work: Path, seed: int) -> Path:
    root = world_dir(work, seed) / "world"
    if not root.exists():
        synthetic.generate(root, PRESET, seed=seed, label_noise=NOISE, progress=False)
    return root


def data_args(root: Path, seed: int) -> list[str]:
    return [
        f"--data.init_args.root={root}",
        f"--seed_everything={seed}",
        f"--data.init_args.seed={seed}",
        "--data.init_args.synthetic_preset=null",
        *COMMON,
    ]


def setting_key(s: dict[str, Any]) -> str:
    return f"lam{s['distill_weight']:g}_tau{s['tau']}_alpha{s['alpha']:g}"


def _config(
    base: str, out: Path, epochs: int, extra_callbacks: list[dict[str, Any]], keep_every_epoch: bool = False
) -> dict[str, Any]:
    cfg = yaml.safe_load((CONFIGS / f"{base}.yaml").read_text())
    cfg["trainer"]["max_epochs"] = epochs
    callbacks = [
        c for c in cfg["trainer"]["callbacks"] if not c["class_path"].endswith(("RetrievalPictures", "PredictionWriter"))
    ]
    if keep_every_epoch:  # the unmonitored checkpoint keeps every epoch instead of the latest only
        for c in callbacks:
            if c["class_path"].endswith(("ModelCheckpoint", "SubEpochCheckpoint")) and "monitor" not in c.get("init_args", {}):
                c["init_args"].update(filename="epoch{epoch:02d}", save_top_k=-1)
    callbacks.append({"class_path": "evidence.ValCurve", "init_args": {"path": str(out / "val_curve.json")}})
    cfg["trainer"]["callbacks"] = callbacks + extra_callbacks
    return cfg


def _write_config(cfg: dict[str, Any], out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_args(root: Path, seed: int) -> list[str]:
    return [*data_args(root, seed), "--trainer.logger=false"]


def random_teacher(work: Path, seed: int) -> str:
    """A SegTeacher checkpoint with random weights (seeded), loadable like a trained one."""
    from structvpr.tasks import SegTeacher

    path = world_dir(work, seed) / "random_teacher.ckpt"
    if not path.exists():
        torch.manual_seed(10_000 + seed)
        model = SegTeacher(trunk="simple", aggregator="gem", lr=0.001, margin=0.1)
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                "state_dict": model.state_dict(),
                "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": pl.__version__,
            },
            tmp,
        )
        os.replace(tmp, path)
    return str(path)


def selected(curve: list[dict[str, float]], first: int, last: int) -> dict[str, float]:
    """The epoch with the best val R@1 among epochs ``first .. last`` (ties: the earliest)."""
    window = [p for p in curve if first <= p["epoch"] <= last]
    return max(window, key=lambda p: (p["val/R@1"], -p["epoch"]))


# -- stages -----------------------------------------------------------------------------------------
def run_teacher(work: Path, seed: int) -> dict[str, Any]:
    out = world_dir(work, seed) / "teacher"
    if not (out / "result.json").exists():
        root = ensure_world(work, seed)
        start = time.perf_counter()
        config = _write_config(_config("teacher", out, TEACHER_EPOCHS, []), out, "teacher.yaml")
        cli = fit_stage(config, out, data_args(root, seed))
        ckpt = best_checkpoint(cli)
        result = {
            "ckpt": ckpt,
            "val_curve": read_json(out / "val_curve.json"),
            "test": test_stage(config, ckpt, out / "test", test_args(root, seed)),
            "seconds": round(time.perf_counter() - start, 1),
        }
        write_json(out / "result.json", result)
        print(f"{out}: test R@1 {100 * result['test']['R@1']:.1f}", flush=True)
    return read_json(out / "result.json")


def run_baseline(work: Path, seed: int, train_seed: int | None = None) -> dict[str, Any]:
    """The baseline run of BASE_EPOCHS + CONT_EPOCHS epochs; tests its BASE_EPOCHS and full-budget selections."""
    train_seed = seed if train_seed is None else train_seed
    out = world_dir(work, seed) / ("baseline" if train_seed == seed else f"baseline_train{train_seed}")
    if not (out / "result.json").exists():
        root = ensure_world(work, seed)
        start = time.perf_counter()
        cfg = _config("baseline", out, BASE_EPOCHS + CONT_EPOCHS, [], keep_every_epoch=True)
        config = _write_config(cfg, out, "baseline.yaml")
        fit_stage(config, out, data_args(root, train_seed))
        curve = read_json(out / "val_curve.json")
        ckpts = out / "checkpoints"
        short = selected(curve, 0, BASE_EPOCHS - 1)
        full = selected(curve, BASE_EPOCHS, BASE_EPOCHS + CONT_EPOCHS - 1)
        result: dict[str, Any] = {"val_curve": curve, "start_ckpt": str(ckpts / f"epoch{BASE_EPOCHS - 1:02d}.ckpt")}
        for name, sel in (("baseline_short", short), ("baseline_full", full)):
            ckpt = str(ckpts / f"epoch{int(sel['epoch']):02d}.ckpt")
            result[name] = {
                "epoch": int(sel["epoch"]),
                "val": sel["val/R@1"],
                "test": test_stage(config, ckpt, out / f"test_{name}", test_args(root, seed)),
            }
        result["seconds"] = round(time.perf_counter() - start, 1)
        write_json(out / "result.json", result)
        print(f"{out}: full-budget test R@1 {100 * result['baseline_full']['test']['R@1']:.1f}", flush=True)
    return read_json(out / "result.json")


def run_row(work: Path, seed: int, row: str, setting: dict[str, Any], train_seed: int | None = None) -> dict[str, Any]:
    """One continuation row from the baseline's epoch BASE_EPOCHS - 1, CONT_EPOCHS epochs, val-selected, tested."""
    train_seed = seed if train_seed is None else train_seed
    suffix = "" if train_seed == seed else f"_train{train_seed}"
    out = world_dir(work, seed) / f"{row}{suffix}" / setting_key(setting)
    if (out / "result.json").exists():
        return read_json(out / "result.json")
    root = ensure_world(work, seed)
    start = time.perf_counter()
    spec = ROWS[row]
    teacher = run_teacher(work, seed)
    base = run_baseline(work, seed, train_seed)
    extra: list[dict[str, Any]] = []
    if spec.get("oracle"):
        extra.append({"class_path": "evidence.OracleWeighting", "init_args": {"world": str(root)}})
    extra.append({"class_path": "evidence.TargetAudit", "init_args": {"world": str(root), "path": str(out / "targets.json")}})
    cfg = _config("distill", out, CONT_EPOCHS, extra)
    cfg["trainer"]["callbacks"] = [c for c in cfg["trainer"]["callbacks"] if not c["class_path"].endswith("SampleWeighting")]
    if spec["weighting"] is not None:
        args = {"tau": int(setting["tau"]), "alpha": float(setting["alpha"]), "max_rank": 100, **spec["weighting"]}
        mining = next(i for i, c in enumerate(cfg["trainer"]["callbacks"]) if c["class_path"].endswith("Mining"))
        cfg["trainer"]["callbacks"].insert(mining + 1, {"class_path": "structvpr.callbacks.SampleWeighting", "init_args": args})
    model = cfg["model"]["init_args"]
    model["distill_weight"] = float(setting["distill_weight"])
    model["student_ckpt"] = base["start_ckpt"]
    model["teacher_ckpt"] = teacher["ckpt"]
    if spec.get("teacher") == "random":
        model["teacher_ckpt"] = random_teacher(work, seed)
    elif spec.get("teacher") == "self":
        model["teacher_ckpt"], model["teacher_input"] = base["start_ckpt"], "image"
    config = _write_config(cfg, out, "distill.yaml")
    cli = fit_stage(config, out, data_args(root, train_seed))
    exporter = next(c for c in cli.trainer.callbacks if type(c).__name__ == "ExportStudent")
    curve = read_json(out / "val_curve.json")
    result: dict[str, Any] = {
        "row": row,
        "setting": setting,
        "train_seed": train_seed,
        "val_curve": curve,
        "selected": selected(curve, 0, CONT_EPOCHS - 1),
        "test": test_stage(CONFIGS / "baseline.yaml", str(exporter.path), out / "test", test_args(root, seed)),
        "targets": read_json(out / "targets.json"),
    }
    weighting = next((c for c in cli.trainer.callbacks if type(c).__name__ == "SampleWeighting"), None)
    if weighting is not None:
        result["partition"] = partition_record(weighting, cli, str(root), int(setting["tau"]))
    result["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / "result.json", result)
    for ckpt in (out / "checkpoints").glob("*.ckpt"):  # the exported student is what is kept
        ckpt.unlink()
    print(f"{out}: val R@1 {result['selected']['val/R@1']:.1f}, test R@1 {100 * result['test']['R@1']:.1f}", flush=True)
    return result


def run_scratch(work: Path, seed: int, setting: dict[str, Any]) -> dict[str, Any]:
    """Uniform distillation from random weights over the baseline's budget, selected as ``baseline_full``."""
    from structvpr.tasks import StructVPRDistillation

    out = world_dir(work, seed) / "scratch" / setting_key(setting)
    if (out / "result.json").exists():
        return read_json(out / "result.json")
    root = ensure_world(work, seed)
    start = time.perf_counter()
    teacher = run_teacher(work, seed)
    extra = [{"class_path": "evidence.TargetAudit", "init_args": {"world": str(root), "path": str(out / "targets.json")}}]
    cfg = _config("distill", out, BASE_EPOCHS + CONT_EPOCHS, extra, keep_every_epoch=True)
    for c in cfg["trainer"]["callbacks"]:
        if c["class_path"].endswith("SampleWeighting"):
            c["init_args"] = {"tau": int(setting["tau"]), "alpha": float(setting["alpha"]), "max_rank": 100, "uniform": True}
    model = cfg["model"]["init_args"]
    model.update(distill_weight=float(setting["distill_weight"]), student_ckpt=None, teacher_ckpt=teacher["ckpt"])
    config = _write_config(cfg, out, "distill.yaml")
    fit_stage(config, out, data_args(root, seed))
    curve = read_json(out / "val_curve.json")
    sel = selected(curve, BASE_EPOCHS, BASE_EPOCHS + CONT_EPOCHS - 1)
    ckpts = out / "checkpoints"
    student = StructVPRDistillation.load_from_checkpoint(ckpts / f"epoch{int(sel['epoch']):02d}.ckpt", map_location="cpu")
    path = student.export_student(out / "student.ckpt")
    result: dict[str, Any] = {
        "row": "scratch",
        "setting": setting,
        "train_seed": seed,
        "val_curve": curve,
        "selected": sel,
        "test": test_stage(CONFIGS / "baseline.yaml", str(path), out / "test", test_args(root, seed)),
        "targets": read_json(out / "targets.json"),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(out / "result.json", result)
    for ckpt in ckpts.glob("*.ckpt"):
        ckpt.unlink()
    print(f"{out}: val R@1 {sel['val/R@1']:.1f}, test R@1 {100 * result['test']['R@1']:.1f}", flush=True)
    return result


def partition_record(weighting: Any, cli: Any, root: str, tau: int) -> dict[str, Any]:
    """The first sub-epoch's noisy group against the manifest, for query and database images apart."""
    from structvpr.callbacks.weighting import NOISY, partition

    corrupted = _bank_corruption(cli.trainer, root)
    n_db = cli.datamodule.training_tuples.num_database
    h = weighting.history[0]
    ids = h["image_ids"]
    noisy = partition(torch.from_numpy(h["teacher_ranks"]), torch.from_numpy(h["student_ranks"]), tau).numpy() == NOISY
    out: dict[str, Any] = {}
    for part, members in (("query", ids >= n_db), ("database", ids < n_db)):
        c, z = corrupted[ids[members]], noisy[members]
        out[part] = {
            "images": int(members.sum()),
            "corrupted": int(c.sum()),
            "noisy": int(z.sum()),
            "noisy_corrupted": int((c & z).sum()),
        }
    return out


# -- phases -----------------------------------------------------------------------------------------
def grid(row: str) -> list[dict[str, Any]]:
    names = list(GRID[row])
    return [{**DEFAULT, **dict(zip(names, values))} for values in itertools.product(*(GRID[row][n] for n in names))]


def prepare_jobs() -> list[tuple[int, str, int]]:
    """Teacher and baseline of the tuning world (the grid needs both), and the confirmation world's teacher
    (which fits beside the longer baseline run); every other world is prepared by the shard that runs it."""
    return [(TUNE_SEED, "teacher", TUNE_SEED), (TUNE_SEED, "baseline", TUNE_SEED), (CONFIRM_SEED, "teacher", CONFIRM_SEED)]


def run_prepare(work: Path, seed: int, stage: str, train_seed: int) -> None:
    if stage == "teacher":
        run_teacher(work, seed)
    else:
        run_baseline(work, seed, train_seed)


def tune_jobs() -> list[tuple[int, str, dict[str, Any]]]:
    jobs = [(TUNE_SEED, "lambda0", dict(DEFAULT))]
    jobs += [(TUNE_SEED, row, s) for row in GRID for s in grid(row)]
    return jobs


def select(work: Path) -> dict[str, Any]:
    """Per tuned row, the grid point with the best val R@1 on the tuning world (its selected epoch)."""
    chosen, scores = {}, {}
    for row in GRID:
        table = {
            setting_key(s): (read_json(world_dir(work, TUNE_SEED) / row / setting_key(s) / "result.json"), s) for s in grid(row)
        }
        scores[row] = {k: r["selected"]["val/R@1"] for k, (r, _) in table.items()}
        best = max(table.values(), key=lambda rs: rs[0]["selected"]["val/R@1"])
        chosen[row] = best[1]
    chosen["lambda0"] = dict(DEFAULT)
    for row, spec in {**ROWS, **EXTRA_ROWS}.items():
        if "lambda_of" in spec:
            chosen[row] = {**DEFAULT, "distill_weight": chosen[spec["lambda_of"]]["distill_weight"]}
    write_json(work / "chosen.json", {"tune_seed": TUNE_SEED, "grid": GRID, "val_R@1": scores, "chosen": chosen})
    return chosen


def rows_jobs(work: Path) -> list[list[tuple[int, str, dict[str, Any], int]]]:
    """After tuning: groups of jobs (one group per world), so that a shard takes whole worlds.

    The confirmation world (the chosen settings on val of a world the grid never saw), the spread
    (lambda0 and uniform with other training seeds on the tuning world), then the final worlds.
    """
    chosen = read_json(work / "chosen.json")["chosen"]
    groups = [[(CONFIRM_SEED, row, chosen[row], CONFIRM_SEED) for row in ROWS]]
    groups += [[(TUNE_SEED, row, chosen[row], t) for row in ("lambda0", "uniform")] for t in SPREAD_SEEDS[1:]]
    groups[-1] += [(TUNE_SEED, row, chosen[row], TUNE_SEED) for row in ROWS]  # the tuning world's own rows
    groups += [[(seed, row, chosen[row], seed) for row in ROWS] for seed in FINAL_SEEDS]
    return groups


def world_range(text: str) -> tuple[int, ...]:
    """``"5-10"`` -> 5..10, ``"5,7"`` -> 5, 7."""
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        seeds += range(int(first), int(last or first) + 1)
    return tuple(seeds)


def extra_jobs(work: Path, worlds: tuple[int, ...], only: list[str]) -> list[list[tuple[int, str, dict[str, Any]]]]:
    """One group per world: the rows ``only`` names (in that order) with the chosen settings."""
    chosen = read_json(work / "chosen.json")["chosen"]
    for row, spec in EXTRA_ROWS.items():
        chosen.setdefault(row, {**DEFAULT, "distill_weight": chosen[spec["lambda_of"]]["distill_weight"]})
    unknown = sorted(set(only) - set(ROWS) - set(EXTRA_ROWS))
    if unknown:
        raise SystemExit(f"--only: unknown rows {unknown}; rows are {sorted({**ROWS, **EXTRA_ROWS})}")
    return [[(seed, row, chosen[row]) for row in only] for seed in worlds]


def main() -> None:
    global PRESET, TEACHER_EPOCHS, BASE_EPOCHS, CONT_EPOCHS, FINAL_SEEDS, SPREAD_SEEDS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["prepare", "tune", "select", "rows", "report", "extend"])
    parser.add_argument("--work", default="runs/evidence", type=Path)
    parser.add_argument("--shard", default="0/1", help="i/n: this process runs every n-th job (rows: world) from the i-th")
    parser.add_argument("--out", default="benchmarks/results/evidence", type=Path, help="report: writes OUT.json and OUT.md")
    parser.add_argument("--worlds", type=world_range, help="rows: these final worlds (5-10, or 5,7) instead of all")
    parser.add_argument("--only", help="rows with --worlds: only these rows (comma-separated, scratch allowed)")
    parser.add_argument(
        "--previous", type=Path, action="append", help="extend: an earlier report whose per-world R@1 are pooled (repeatable)"
    )
    parser.add_argument("--smoke", action="store_true", help="a few-minute run of every phase on the tiny preset")
    ns = parser.parse_args()
    if ns.smoke:
        PRESET, TEACHER_EPOCHS, BASE_EPOCHS, CONT_EPOCHS = "tiny", 1, 2, 1
        FINAL_SEEDS, SPREAD_SEEDS = (0,), (TUNE_SEED, 1001)
        for row in GRID:
            GRID[row] = {k: v[:1] for k, v in GRID[row].items()}
    torch.set_num_threads(1)
    os.environ.setdefault("WANDB_MODE", "offline")
    if ns.phase == "prepare":
        for job in shard(prepare_jobs(), ns.shard):
            run_prepare(ns.work, *job)
    elif ns.phase == "tune":
        for job in shard(tune_jobs(), ns.shard):
            run_row(ns.work, *job)
    elif ns.phase == "select":
        print(json.dumps(select(ns.work), indent=1))
    elif ns.phase == "rows" and ns.worlds:
        only = ns.only.split(",") if ns.only else list(ROWS)
        for group in shard(extra_jobs(ns.work, ns.worlds, only), ns.shard):
            for seed, row, setting in group:
                if row in EXTRA_ROWS:
                    run_scratch(ns.work, seed, setting)
                else:
                    run_row(ns.work, seed, row, setting)
    elif ns.phase == "rows":
        for group in shard(rows_jobs(ns.work), ns.shard):
            for seed, row, setting, train_seed in group:
                run_row(ns.work, seed, row, setting, train_seed=train_seed)
    elif ns.phase == "extend":
        from report_evidence import write_extension

        write_extension(ns.work, ns.out, previous=ns.previous, base_epochs=BASE_EPOCHS, cont_epochs=CONT_EPOCHS)
    else:
        from report_evidence import write_report

        test_queries = synthetic.PRESETS[PRESET].splits["test"].num_queries
        write_report(
            ns.work,
            ns.out,
            final_seeds=FINAL_SEEDS,
            tune_seed=TUNE_SEED,
            confirm_seed=CONFIRM_SEED,
            spread_seeds=SPREAD_SEEDS,
            base_epochs=BASE_EPOCHS,
            cont_epochs=CONT_EPOCHS,
            test_queries=test_queries,
            preset=PRESET,
        )


if __name__ == "__main__":
    main()
