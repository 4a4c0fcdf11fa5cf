"""LightningCLI for ``structvpr fit|validate|test|predict``: checkpoint checks, per-run folders, input sizes.

Used by the console script (:mod:`structvpr.cli`) and the demo pipeline (:mod:`structvpr.pipeline`).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from structvpr.errors import CheckpointMismatchError, MissingCheckpointError
from structvpr.utils.io import read_checkpoint

SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: Init arguments that fix a model's architecture: a checkpoint must agree with the config on them.
ARCHITECTURE_KEYS = ("trunk", "aggregator", "num_clusters", "pca_dim", "num_groups")


def _plain(value: Any) -> Any:
    return value.as_dict() if hasattr(value, "as_dict") else value


def check_checkpoint_matches(ckpt_path: str | Path, model_config: Any) -> None:
    """Refuse a checkpoint whose class or architecture differs from the config's model.

    Raises:
        CheckpointMismatchError: naming both classes or the differing init arguments.
    """
    saved = dict(read_checkpoint(ckpt_path).get("hyper_parameters", {}))
    config = _plain(model_config) or {}
    saved_class, config_class = saved.get("_class_path"), config.get("class_path")
    if saved_class and config_class and saved_class != config_class:
        raise CheckpointMismatchError(
            f"{ckpt_path} holds a {saved_class.rsplit('.', 1)[-1]} but the config builds a "
            f"{config_class.rsplit('.', 1)[-1]}: use the config it was trained with (or a checkpoint of that class)"
        )
    init = _plain(config.get("init_args")) or {}
    diffs = [
        f"{k}={saved[k]!r} in the checkpoint, {init[k]!r} in the config"
        for k in ARCHITECTURE_KEYS
        if k in saved and k in init and _plain(saved[k]) != _plain(init[k])
    ]
    if diffs:
        raise CheckpointMismatchError(f"{ckpt_path} does not fit the config's model: {'; '.join(diffs)}")


#: Command-line options that set the input size on purpose (they win over the checkpoint's size).
SIZE_OPTIONS = ("--data.init_args.image_size", "--data.image_size")


def checkpoint_input_size(ckpt_path: str | Path) -> list[int] | None:
    """The ``(H, W)`` a student checkpoint records it was trained on (``structvpr_input``), if any.

    Raises:
        CheckpointMismatchError: when the checkpoint records a normalisation other than the
            ImageNet mean and std every structvpr data source applies.
    """
    from structvpr.data.datasets import IMAGENET_MEAN, IMAGENET_STD

    spec = read_checkpoint(ckpt_path).get("structvpr_input") or {}
    for name, expected in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
        found = spec.get(name)
        if found is not None and [round(float(v), 4) for v in found] != [round(float(v), 4) for v in expected]:
            raise CheckpointMismatchError(
                f"{ckpt_path} was trained with normalisation {name} {list(found)}, but "
                f"structvpr's data sources normalise with {list(expected)}"
            )
    size = spec.get("image_size")
    return [int(v) for v in size] if size else None


def apply_checkpoint_input_size(config: Any, args: Sequence[str]) -> str | None:
    """Feed ``test``/``validate``/``predict`` the size the checkpoint was trained at.

    A size set on the command line (``--data.init_args.image_size``) is kept, with a warning
    naming both sizes; a size from a config file or the default gives way to the checkpoint's.
    Returns the message it printed or warned (None when the sizes agree or nothing is recorded).
    """
    ckpt_path = config.get("ckpt_path")
    if not ckpt_path or not Path(ckpt_path).is_file() or config.get("data") is None:
        return None
    trained = checkpoint_input_size(ckpt_path)
    key = "data.init_args.image_size" if "data.init_args" in config else "data.image_size"
    current = config.get(key)
    if trained is None or current is None or [int(v) for v in current] == trained:
        return None
    shown = f"{trained[0]}x{trained[1]}", f"{int(current[0])}x{int(current[1])}"
    if any(a == opt or a.startswith(opt + "=") for a in args for opt in SIZE_OPTIONS):
        message = (
            f"{ckpt_path} was trained on {shown[0]} images, but --data.init_args.image_size asks for "
            f"{shown[1]}: recall at a size the model never saw is usually far lower"
        )
        warnings.warn(message, stacklevel=2)
        return message
    config[key] = trained
    message = (
        f"{ckpt_path} was trained on {shown[0]} images: using that size instead of the configured "
        f"{shown[1]} (set --data.init_args.image_size on the command line to force another)"
    )
    print(message, file=sys.stderr)
    return message


def _cli_class() -> Any:
    from pytorch_lightning.cli import LightningCLI, SaveConfigCallback

    from structvpr.utils.runs import run_folder

    class VersionedSaveConfig(SaveConfigCallback):
        """Writes ``config.yaml`` into the run's own folder (``<log dir>/version_N``), never over another run's."""

        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            if self.already_saved:
                return
            folder = run_folder(trainer)
            if trainer.is_global_zero:
                self.parser.save(
                    self.config, str(folder / self.config_filename), skip_none=False, overwrite=True, multifile=self.multifile
                )
                self.already_saved = True
            self.already_saved = trainer.strategy.broadcast(self.already_saved)

    class StructVPRCLI(LightningCLI):
        """LightningCLI that checks checkpoints against the config and keeps checkpoints per run name.

        - ``--ckpt_path`` of another class or architecture than the config's model is refused
          (Lightning would silently rebuild the model from the checkpoint).
        - Checkpoint callbacks without a ``dirpath`` write to ``<logger save_dir>/checkpoints``
          (else ``<default_root_dir>/checkpoints``), the same for every run of a config, so
          ``--ckpt_path last`` finds the previous run's ``last.ckpt``; when there is none it fails.
        - Checkpoints are read with ``weights_only=True``.
        - ``test``, ``validate`` and ``predict`` feed a student checkpoint the image size it
          records (:func:`apply_checkpoint_input_size`).
        """

        def parse_arguments(self, parser: Any, args: Any) -> None:
            self.cli_args = [str(a) for a in args] if isinstance(args, (list, tuple)) else sys.argv[1:]
            super().parse_arguments(parser, args)

        def before_instantiate_classes(self) -> None:
            if self.subcommand in ("test", "validate", "predict"):
                apply_checkpoint_input_size(self.config[self.subcommand], self.cli_args)

        def _parse_ckpt_path(self) -> None:
            sub = self.config.get("subcommand")
            ckpt_path = self.config[sub].get("ckpt_path") if sub else None
            if ckpt_path and Path(ckpt_path).is_file():
                check_checkpoint_matches(ckpt_path, self.config[sub].get("model"))
            elif ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry"):
                raise MissingCheckpointError(
                    f"--ckpt_path {ckpt_path}: no such file (give a checkpoint file, or "
                    f"`last` to resume this config's latest run)"
                )
            super()._parse_ckpt_path()

        def _stable_checkpoint_dirs(self) -> Path:
            trainer = self.trainer
            save_dir = getattr(trainer.logger, "save_dir", None) if trainer.logger is not None else None
            folder = Path(save_dir or trainer.default_root_dir) / "checkpoints"
            for callback in trainer.checkpoint_callbacks:
                if getattr(callback, "dirpath", None) is None:
                    callback.dirpath = str(folder)  # type: ignore[attr-defined]
            return folder

        def before_fit(self) -> None:
            folder = self._stable_checkpoint_dirs()
            if self.config_init[self.subcommand].get("ckpt_path") != "last":
                return
            found = sorted(folder.glob("last*.ckpt"))
            # A link whose target was deleted (a run folder cleaned by hand): Lightning would warn and train
            # from scratch, and write a second dangling link beside it.
            dangling = [p for p in found if p.is_symlink() and not p.exists()]
            if dangling:
                raise MissingCheckpointError(
                    f"--ckpt_path last: {dangling[0]} points at {os.readlink(dangling[0])}, which "
                    f"does not exist; give a checkpoint file of {folder} instead, or delete "
                    f"the link to start afresh"
                )
            if not found:
                raise MissingCheckpointError(
                    f"--ckpt_path last: no last*.ckpt in {folder}, the checkpoint folder of "
                    "this config's runs; give a checkpoint file instead"
                )

        def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
            kwargs = super()._prepare_subcommand_kwargs(subcommand)
            if "weights_only" in self._subcommand_method_arguments[subcommand] and kwargs.get("weights_only") is None:
                kwargs["weights_only"] = True
            return kwargs

    StructVPRCLI.save_config_class = VersionedSaveConfig  # type: ignore[attr-defined]
    return StructVPRCLI


def cli_main(args: Sequence[str] | None = None, run: bool = True) -> Any:
    """LightningCLI over every :class:`~structvpr.tasks.VPRTask` and :class:`~structvpr.data.VPRDataModule`."""
    from structvpr.data import VPRDataModule
    from structvpr.tasks import VPRTask

    # `structvpr demo` calls the CLI from Python while sys.argv holds its own arguments.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    cli = _cli_class()
    try:
        return cli(
            VPRTask,
            VPRDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_callback=cli.save_config_class,
            # errors raise (main() prints them short, naming the config) instead of a 45-line usage block
            parser_kwargs={"exit_on_error": False, **{name: {"exit_on_error": False} for name in SUBCOMMANDS}},
            args=list(args) if args is not None else None,
            run=run,
        )
    except BaseException:
        if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
            sys.modules["wandb"].finish(exit_code=1)  # a failed fit closes its logger run
        raise
