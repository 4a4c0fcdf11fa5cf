"""Command line: ``structvpr fit|validate|test|predict`` (LightningCLI), ``synth``, ``segment``, ``splits``, ``demo``, ``export``."""  # noqa: E501

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from structvpr.errors import DEBUG_ENV, CheckpointMismatchError, StructVPRInputError, user_error_message
from structvpr.lightning_cli import (
    SUBCOMMANDS,
    apply_checkpoint_input_size,
    check_checkpoint_matches,
    checkpoint_input_size,
    cli_main,
)

# The LightningCLI lives in structvpr.lightning_cli (the demo pipeline uses it without this module).
__all__ = [
    "CheckpointMismatchError",
    "apply_checkpoint_input_size",
    "check_checkpoint_matches",
    "checkpoint_input_size",
    "cli_main",
    "config_error_message",
    "main",
    "splits_main",
    "synth_main",
]

EXTRA_COMMANDS = """structvpr also has:
  synth   generate the synthetic place world   (structvpr synth --help)
  segment write label maps with a local segmentation network (structvpr segment --help)
  splits  list the named dataset splits, their thresholds and options
  demo    run the whole StructVPR pipeline      (structvpr demo --help)
  export  a student checkpoint to ONNX or TorchScript (structvpr export --help)
"""


def config_error_message(err: BaseException, args: Sequence[str]) -> str:
    """A short message for a bad config key or value, naming the config files given."""
    configs = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config", "-c")]
    configs += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    lines = [
        line
        for line in str(err).splitlines()
        if "NoneType" not in line and not line.strip().startswith(("Given value", "Subtypes:"))
    ]
    where = ", ".join(configs) if configs else "the command line"
    sub = next((a for a in args if a in SUBCOMMANDS), "")
    return (
        f"structvpr {sub}: bad configuration in {where} (or its command-line overrides):\n"
        + "\n".join(lines)
        + f"\n(`structvpr {sub} --help` lists every option)"
    )


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
    for kind, table, arg in (
        ("test", BENCHMARKS, "test_benchmark"),
        ("validation", {k: v for k, v in VALIDATION_SPLITS.items() if k not in BENCHMARKS}, "val_benchmark"),
        ("training", TRAINING_SPLITS, "train_benchmark"),
    ):
        lines.append(f"{kind} splits (data.init_args.{arg}):")
        for name, reader in table.items():
            options = [f"{p.name}={p.default!r}" for p in inspect.signature(reader).parameters.values() if p.name != "root"]
            doc = " ".join((reader.__doc__ or "").split("\n\n")[0].split())
            lines.append(f"  {name}{'  [options: ' + ', '.join(options) + ']' if options else ''}\n      {doc}")
    text = "\n".join(lines)
    print(text)
    return text


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``structvpr`` console script.

    Errors a user can fix (:class:`~structvpr.errors.StructVPRInputError`: a bad file, layout or
    checkpoint) print one short message naming the file and the fix and exit 1; ``--debug`` (or
    ``STRUCTVPR_DEBUG=1``) shows their traceback. Other errors are bugs and keep theirs.
    """
    argv = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "0") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        _dispatch(argv)
    except StructVPRInputError as err:
        if debug:
            raise
        sub = argv[0] if argv and not argv[0].startswith("-") else ""
        sys.stderr.write(
            f"structvpr {sub}: error: {user_error_message(err)}\n(run again with --debug, or {DEBUG_ENV}=1, for the traceback)\n"
        )
        raise SystemExit(1) from None


def _dispatch(argv: list[str]) -> None:
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
        try:
            cli_main(argv)
        except argparse.ArgumentError as err:
            sys.stderr.write(config_error_message(err, argv) + "\n")
            raise SystemExit(2) from None
