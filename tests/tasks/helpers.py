"""Helpers shared by the task tests (also imported by subprocess runs through PYTHONPATH)."""

from pathlib import Path

import pytorch_lightning as pl
import torch

from structvpr.data import VPRDataModule


class RecordWeights(pl.Callback):
    """Records the module's sample weights when training starts and at every epoch start."""

    def __init__(self, out_dir: str | None = None) -> None:
        self.out_dir = out_dir
        self.at_train_start: torch.Tensor | None = None
        self.per_epoch: list[torch.Tensor] = []

    def on_train_start(self, trainer, pl_module):
        self.at_train_start = pl_module.sample_weights.detach().clone()

    def on_train_epoch_start(self, trainer, pl_module):
        self.per_epoch.append(pl_module.sample_weights.detach().clone())

    def on_train_end(self, trainer, pl_module):
        if self.out_dir is not None:
            Path(self.out_dir).mkdir(parents=True, exist_ok=True)
            torch.save(torch.stack(self.per_epoch), Path(self.out_dir) / f"weights_rank{trainer.global_rank}.pt")


def _dm(root, image_size=(32, 64), **kw):
    return VPRDataModule(
        root=str(root), image_size=image_size, batch_size=4, eval_batch_size=32, num_negatives=3, synthetic_preset=None, **kw
    )


def _trainer(tmp, epochs=1, callbacks=(), **kw):
    return pl.Trainer(
        max_epochs=epochs,
        limit_train_batches=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp),
        callbacks=list(callbacks),
        **kw,
    )


class RecordSubepoch(pl.Callback):
    """Saves, at the first sub-epoch's start, its tuples, weights, student descriptors and this process's
    encoding count to ``out_dir/subepoch_rank<r>.pt`` (for comparing DDP with one process)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch != 0:
            return
        bank = pl_module.banks["student"]
        ids, desc = bank.ids, bank.array
        record = {
            "tuples": trainer.datamodule.train_dataset.tuples.clone(),
            "ids": torch.from_numpy(ids),
            "descriptors": desc.cpu(),
            "weights": pl_module.sample_weights.cpu(),
            "encoded": sum(b.images_encoded for b in pl_module.banks.values()),
            "bank": len(trainer.datamodule.train_images),
        }
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        torch.save(record, Path(self.out_dir) / f"subepoch_rank{trainer.global_rank}.pt")


class KillAt(pl.Callback):
    """Kills its own process with SIGKILL (no clean-up, as ``kill -9``) at a batch of an epoch."""

    def __init__(self, epoch: int = 1, batch: int = 1) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


class RecordPlaceBatches(pl.Callback):
    """Records, per process, the place ids of every training batch, the loss class and the final weights."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.places: list[list[int]] = []
        self.batches: list[int] = []
        self.window_images = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.places.append(sorted(batch["place"][:, 0].tolist()))
        self.batches.append(int(batch["batch"]))
        if hasattr(pl_module, "window_ids") and batch_idx % pl_module.hp.bank_batches == 0:
            self.window_images += len(pl_module.window_ids(batch_idx)[1])

    def on_train_end(self, trainer, pl_module):
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        weights = torch.cat([p.detach().flatten() for p in pl_module.encoder.parameters()])
        record = {"places": self.places, "loss": type(pl_module.loss_fn).__name__, "weights": weights}
        if hasattr(pl_module, "image_weights"):  # a PlaceDistillation: its weights and teacher-bank work too
            record["image_weights"] = pl_module.image_weights.detach().cpu()
            record["teacher_encoded"] = pl_module.banks["teacher"].images_encoded
            record["batches"] = self.batches
            record["window_images"] = self.window_images
        torch.save(record, Path(self.out_dir) / f"places_rank{trainer.global_rank}.pt")
