"""Export the distilled student as a plain StructVPRStudent checkpoint when training ends."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from structvpr.protocols import ExportsStudent


class ExportStudent(pl.Callback):
    """Write ``<checkpoint dir>/<filename>`` from the best checkpoint (or the last weights).

    The file holds only the RGB encoder and the student's hyper-parameters, so
    ``StructVPRStudent.load_from_checkpoint`` reads it without the teacher.

    Args:
        filename: Name of the exported file.

    """

    def __init__(self, filename: str = "student.ckpt") -> None:
        self.filename = filename
        self.path: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, ExportsStudent):
            raise TypeError(f"ExportStudent needs a student task (export_student), got {type(pl_module).__name__}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
        folder = Path(getattr(ckpt, "dirpath", None) or trainer.default_root_dir)
        if best:
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]  # weights only: no code runs
            current = {k: v.clone() for k, v in pl_module.state_dict().items()}
            pl_module.load_state_dict(state)
        if trainer.is_global_zero:
            assert isinstance(pl_module, ExportsStudent)
            self.path = Path(pl_module.export_student(folder / self.filename))
        if best:
            pl_module.load_state_dict(current)
