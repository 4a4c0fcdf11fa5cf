"""Command line: ``structvpr fit|validate|test|predict`` (LightningCLI), ``synth``, ``segment``, ``splits``, ``demo``, ``export``."""  # noqa: E501

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import Any

EXTRA_COMMANDS = """structvpr also has:
  synth   generate the synthetic place world   (structvpr synth --help)
  segment write label maps with a local segmentation network (structvpr segment --help)
  splits  list the named dataset splits, their thresholds and options
  demo    run the whole StructVPR pipeline      (structvpr demo --help)
  export  a student checkpoint to ONNX or TorchScript (structvpr export --help)
"""


def cli_main(args: Sequence[str] | None = None, run: bool = True) -> Any:
    """LightningCLI over every :class:`~structvpr.tasks.VPRTask` and :class:`~structvpr.data.VPRDataModule`."""
    from pytorch_lightning.cli import LightningCLI

    from structvpr.data import VPRDataModule
    from structvpr.tasks import VPRTask

    # `structvpr demo` calls the CLI from Python while sys.argv holds its own arguments.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return LightningCLI(
        VPRTask, VPRDataModule, subclass_mode_model=True, subclass_mode_data=True,
        seed_everything_default=0, save_config_kwargs={"overwrite": True},
        args=list(args) if args is not None else None, run=run,
    )  # fmt: skip


def synth_main(args: Sequence[str]) -> None:
    """``structvpr synth``: write a synthetic world."""
    from structvpr.data import synthetic

    parser = argparse.ArgumentParser(prog="structvpr synth", description="Generate the synthetic place world.")
    parser.add_argument("--root", required=True, help="destination folder (must not exist unless --overwrite)")
    parser.add_argument("--preset", default="demo", choices=sorted(synthetic.PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-noise", type=float, default=None, help="fraction of corrupted label maps")
    parser.add_argument("--overwrite", action="store_true")
    ns = parser.parse_args(list(args))
    manifest = synthetic.generate(ns.root, ns.preset, ns.seed, label_noise=ns.label_noise, overwrite=ns.overwrite)
    print(synthetic.summary(manifest))


def splits_main(args: Sequence[str]) -> str:
    """``structvpr splits``: the named splits with their use, options and docstring summary."""
    import inspect

    from structvpr.data.benchmarks import BENCHMARKS, TRAINING_SPLITS, VALIDATION_SPLITS

    argparse.ArgumentParser(prog="structvpr splits", description="List the named dataset splits.").parse_args(list(args))
    lines = []
    for kind, table, arg in (("test", BENCHMARKS, "test_benchmark"),
                             ("validation", {k: v for k, v in VALIDATION_SPLITS.items() if k not in BENCHMARKS},
                              "val_benchmark"),
                             ("training", TRAINING_SPLITS, "train_benchmark")):  # fmt: skip
        lines.append(f"{kind} splits (data.init_args.{arg}):")
        for name, reader in table.items():
            options = [f"{p.name}={p.default!r}" for p in inspect.signature(reader).parameters.values() if p.name != "root"]
            doc = " ".join((reader.__doc__ or "").split("\n\n")[0].split())
            lines.append(f"  {name}{'  [options: ' + ', '.join(options) + ']' if options else ''}\n      {doc}")
    text = "\n".join(lines)
    print(text)
    return text


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``structvpr`` console script."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "synth":
        synth_main(argv[1:])
    elif argv and argv[0] == "segment":
        from structvpr.segment import segment_main

        segment_main(argv[1:])
    elif argv and argv[0] == "export":
        from structvpr.export import export_main

        export_main(argv[1:])
    elif argv and argv[0] == "splits":
        splits_main(argv[1:])
    elif argv and argv[0] == "demo":
        from structvpr.pipeline import pipeline_main

        pipeline_main(argv[1:])
    else:
        if not argv or argv[0] in ("-h", "--help"):
            print(EXTRA_COMMANDS)
        cli_main(argv if args is not None else None)
