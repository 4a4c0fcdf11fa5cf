"""The full StructVPR pipeline: teacher, RGB baseline, distilled student, then one test table."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from structvpr.lightning_cli import cli_main
from structvpr.reports import recall_table

ROWS = {
    "teacher": "SegTeacher (label maps)",
    "baseline": "RGB baseline",
    "control": "RGB baseline + the student's epochs (lambda 0)",
    "distill": "StructVPR student (RGB)",
}
#: Stages whose fit is the distillation config from the teacher and the baseline (the control with lambda 0).
_FROM_BASELINE = ("control", "distill")


def _run(args: list[str]) -> Any:
    cli = cli_main(args)
    # Each stage is its own wandb run: close this one before the next stage starts.
    if "wandb" in sys.modules:
        sys.modules["wandb"].finish()
    return cli


def fit_stage(config: Path, out: Path, overrides: Sequence[str]) -> Any:
    """``structvpr fit`` of one config with its logs and checkpoints under ``out``."""
    args = [
        "fit",
        "--config",
        str(config),
        "--trainer.default_root_dir",
        str(out),
        "--trainer.logger.init_args.save_dir",
        str(out),
        *overrides,
    ]
    return _run(args)


def best_checkpoint(cli: Any) -> str:
    """The best (else last) checkpoint of a finished fit."""
    ckpt = cli.trainer.checkpoint_callback
    path = ckpt.best_model_path or ckpt.last_model_path
    if not path:
        raise RuntimeError(f"{cli.trainer.default_root_dir}: training saved no checkpoint")
    return str(path)


def test_stage(config: Path, ckpt: str, out: Path, overrides: Sequence[str]) -> dict[str, float]:
    """``structvpr test`` of a checkpoint; returns its Recall@N dict."""
    args = [
        "test",
        "--config",
        str(config),
        "--ckpt_path",
        ckpt,
        "--trainer.default_root_dir",
        str(out),
        "--trainer.logger.init_args.save_dir",
        str(out),
        *overrides,
    ]
    return dict(_run(args).model.test_results)


def run_pipeline(
    config_dir: str | Path = "lightning_configs/synthetic",
    out_dir: str | Path = "runs/demo",
    data_overrides: Sequence[str] = (),
    distill_overrides: Sequence[str] = (),
    stages: Sequence[str] = ("teacher", "baseline", "control", "distill"),
) -> dict[str, Any]:
    """Train the teacher, the RGB baseline, its budget-matched control and the distilled student; test all four.

    The student starts from the baseline and trains ``distill.yaml``'s epochs more, so the table
    also holds the *control*: the same continuation from the same checkpoint with
    ``distill_weight=0`` (the student's steps without the teacher). The student is compared with
    the control, not with the shorter baseline.

    Args:
        config_dir: Folder with ``teacher.yaml``, ``baseline.yaml`` and ``distill.yaml``.
        out_dir: Where logs, checkpoints and ``results.{json,md}`` go.
        data_overrides: CLI overrides applied to every stage (``--data.init_args.root=...``).
        distill_overrides: CLI overrides for the distillation stage only.
        stages: Stages to run, in order (the control and the distillation need the first two).

    Returns:
        ``{"results": {row: recall dict}, "seconds": {stage: wall time}, "checkpoints": {...}}``.

    """
    from structvpr.callbacks.export import ExportStudent

    config_dir, out = Path(config_dir), Path(out_dir)
    for name in ("teacher", "baseline", "distill"):
        if not (config_dir / f"{name}.yaml").is_file():
            raise FileNotFoundError(f"{config_dir / (name + '.yaml')}: pipeline config is missing")
    ckpts: dict[str, str] = {}
    seconds: dict[str, float] = {}
    results: dict[str, dict[str, float]] = {}
    for stage in stages:
        start = time.perf_counter()
        print(f"\n=== {stage}: training ===", flush=True)
        overrides = list(data_overrides)
        if stage in _FROM_BASELINE:
            overrides += [
                f"--model.init_args.teacher_ckpt={ckpts['teacher']}",
                f"--model.init_args.student_ckpt={ckpts['baseline']}",
                *distill_overrides,
            ]
            if stage == "control":
                overrides.append("--model.init_args.distill_weight=0")
        config = config_dir / f"{'distill' if stage in _FROM_BASELINE else stage}.yaml"
        cli = fit_stage(config, out / stage, overrides)
        if stage in _FROM_BASELINE:
            exporter = next(c for c in cli.trainer.callbacks if isinstance(c, ExportStudent))
            ckpts[stage] = str(exporter.path)
        else:
            ckpts[stage] = best_checkpoint(cli)
        # The distilled student is tested as a plain StructVPRStudent from its exported file.
        test_config = config_dir / ("baseline.yaml" if stage in _FROM_BASELINE else f"{stage}.yaml")
        print(f"\n=== {stage}: test ===", flush=True)
        results[ROWS[stage]] = test_stage(test_config, ckpts[stage], out / stage / "test", list(data_overrides))
        seconds[stage] = round(time.perf_counter() - start, 1)
    report = {"results": results, "seconds": seconds, "checkpoints": ckpts}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    table = recall_table(results)
    (out / "results.md").write_text(table + "\n")
    print("\nStructVPR on the synthetic test split (Recall@N, %):\n" + table)
    print(f"stage times (s): {seconds}; written to {out}/results.{{json,md}}")
    return report


def pipeline_main(args: Sequence[str]) -> dict[str, Any]:
    """``structvpr demo``."""
    parser = argparse.ArgumentParser(prog="structvpr demo", description=run_pipeline.__doc__)
    parser.add_argument("--configs", default="lightning_configs/synthetic", help="folder of the three stage configs")
    parser.add_argument("--out", default="runs/demo", help="output folder")
    parser.add_argument("overrides", nargs="*", help="CLI overrides for every stage, e.g. --data.init_args.root=DIR")
    ns, rest = parser.parse_known_args(list(args))
    return run_pipeline(ns.configs, ns.out, data_overrides=[*ns.overrides, *rest])
