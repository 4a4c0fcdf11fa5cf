import pytorch_lightning as pl
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from structvpr.callbacks import HardNegativeMining, RetrievalPictures, SampleWeighting
from structvpr.tasks import StructVPRDistillation
from tests.tasks.helpers import _dm


def test_weighting_and_pictures_reach_tensorboard(trained, tiny_world, tmp_path):
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="tb")
    model = StructVPRDistillation(teacher_ckpt=trained["teacher"])
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        accelerator="cpu",
        logger=logger,
        enable_progress_bar=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        callbacks=[HardNegativeMining(), SampleWeighting(), RetrievalPictures(num_queries=2, top_k=2)],
    )
    dm = _dm(tiny_world)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm)
    events = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0, "images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    assert "weighting/weights" in tags["histograms"]
    assert {"weighting/noisy_count", "weighting/teachable_mean_weight", "val/R@1", "test/R@1"} <= set(tags["scalars"])
    assert {"test/retrieval", "test/recall_curve"} <= set(tags["images"])
