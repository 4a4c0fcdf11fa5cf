import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Subset

from structvpr.bank import encode_loader
from structvpr.callbacks import FitPCAWhitening
from structvpr.models import PCAWhitening
from structvpr.tasks import StructVPRStudent
from tests.tasks.helpers import _dm, _trainer


def test_pca_is_refitted_before_each_validation_and_saved_with_the_weights(tiny_world, tmp_path):
    model = StructVPRStudent(pca_dim=8)
    fit_pca = FitPCAWhitening(num_images=40, seed=1)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    dm = _dm(tiny_world)
    trainer = _trainer(tmp_path, epochs=2, callbacks=[fit_pca, ckpt])
    trainer.fit(model, datamodule=dm)
    assert fit_pca.fits == 2 and bool(model.encoder.pca.fitted)
    # Known answer: the same sample of database images, encoded with the final weights
    # (the last validation closes training), fitted by hand.
    n = min(40, dm.train_images.num_database)
    ids = np.sort(np.random.default_rng(1).choice(dm.train_images.num_database, n, replace=False))
    desc = encode_loader(model.encoder, DataLoader(Subset(dm.train_images, ids.tolist()), batch_size=32))
    reference = PCAWhitening(model.encoder.pooled_dim, 8)
    reference.fit(desc)
    torch.testing.assert_close(model.encoder.pca.projection, reference.projection, atol=1e-4, rtol=1e-3)
    image = dm.val_dataset[0]["image"][None]
    assert model.encode(image).shape == (1, 8)  # what val/R@N was computed on
    loaded = StructVPRStudent.load_from_checkpoint(tmp_path / "ckpt/last.ckpt", map_location="cpu")
    assert bool(loaded.encoder.pca.fitted)
    torch.testing.assert_close(loaded.encode(image), model.encode(image))


def test_pca_callback_needs_a_model_with_pca_and_enough_images(tiny_world, tmp_path):
    with pytest.raises(ValueError, match="needs a model with PCA-whitening: set model.init_args.pca_dim"):
        _trainer(tmp_path, callbacks=[FitPCAWhitening()]).fit(StructVPRStudent(), datamodule=_dm(tiny_world))
    with pytest.raises(ValueError, match=r"PCA-whitening to 8 dimensions needs more than 8 training database images; 5"):
        _trainer(tmp_path, callbacks=[FitPCAWhitening(num_images=5)]).fit(StructVPRStudent(pca_dim=8), datamodule=_dm(tiny_world))
