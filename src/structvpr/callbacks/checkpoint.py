"""A checkpoint after every sub-epoch, whatever the validation interval."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint


class SubEpochCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, saving after every sub-epoch even when validation runs less often.

    Lightning's unmonitored checkpoint saves only after validation once
    ``check_val_every_n_epoch > 1`` (the paper configs validate every 8 sub-epochs), so a killed
    run would lose up to 7 sub-epochs. This one always saves at the end of the training epoch,
    which is what Lightning does anyway when validation runs every epoch: an epoch's closing
    validation runs before ``on_train_epoch_end``, so the checkpoint still carries that
    validation's best-score state. Every ``ModelCheckpoint`` argument works as usual.
    """

    def _should_save_on_train_epoch_end(self, trainer: pl.Trainer) -> bool:
        if self._save_on_train_epoch_end is not None:
            return self._save_on_train_epoch_end
        return True
