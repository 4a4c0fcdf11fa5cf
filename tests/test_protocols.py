"""A datamodule and a task written outside structvpr run mining and weighting through the protocols alone."""

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from structvpr.callbacks import HardNegativeMining, SampleWeighting
from structvpr.data.datasets import ImageDataset, TripletDataset, joint_transform
from structvpr.data.labels import cityscapes_grouping
from structvpr.data.vg import read_split
from structvpr.losses import distillation_loss, triplet_margin_loss
from structvpr.models import PlaceEncoder
from structvpr.protocols import Bank, DistillationTask, TrainingData


class _Inputs(Dataset):
    def __init__(self, bank, ids, key):
        self.bank, self.ids, self.key = bank, list(ids), key

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        image, label = self.bank.load(self.ids[i])
        return {"x": image if self.key == "image" else label}


class ThirdPartyData(pl.LightningDataModule):
    """Its own loaders; structvpr's public TripletDataset holds the tuples."""

    def __init__(self, root):
        super().__init__()
        grouping = cityscapes_grouping()
        records = [read_split(root, "train", role) for role in ("database", "queries")]
        self.bank = ImageDataset(*records, joint_transform((32, 64), train=False), grouping, with_labels=True)
        self.tuples = TripletDataset(self.bank, num_negatives=2)

    @property
    def training_tuples(self):
        return self.tuples

    def train_images_dataloader(self, ids=None, key="image"):
        return DataLoader(_Inputs(self.bank, range(len(self.bank)) if ids is None else ids, key), batch_size=16)

    def train_dataloader(self):
        return DataLoader(self.tuples, batch_size=4, shuffle=True)


class ThirdPartyBank:
    """A bank of its own (structvpr.protocols.Bank): encodes on request, keeps nothing."""

    def __init__(self, task, encoder, key):
        self.task, self.encoder, self.key = task, encoder, key

    @property
    def dim(self):
        return self.encoder.pooled_dim

    def encode(self, ids, encoder=None):
        loader = self.task.trainer.datamodule.train_images_dataloader(np.asarray(ids), self.key)
        with torch.no_grad():
            return torch.cat([(encoder or self.encoder).eval().pooled(b["x"]) for b in loader])

    descriptors = encode

    def set_storage(self, dtype=torch.float32, memmap_dir=None):
        assert dtype == torch.float32 and memmap_dir is None


class ThirdPartyTask(pl.LightningModule):
    """Encodes on request without caching; owns its sample weights."""

    def __init__(self, num_queries):
        super().__init__()
        self.student, self.teacher = PlaceEncoder(3), PlaceEncoder(5).requires_grad_(False)
        self.register_buffer("sample_weights", torch.ones(num_queries))
        self.banks = {
            "student": ThirdPartyBank(self, self.student, "image"),
            "teacher": ThirdPartyBank(self, self.teacher, "label"),
        }
        self.hparams["search_backend"] = "torch"

    def set_sample_weights(self, indices, weights):
        self.sample_weights[indices] = weights.to(self.sample_weights)

    def training_step(self, batch, batch_idx):
        self.student.train()
        b, n = batch["image"].shape[:2]
        s = self.student.pooled(batch["image"].flatten(0, 1)).view(b, n, -1)
        t = self.teacher.pooled(batch["label"].flatten(0, 1)).view(b, n, -1)
        loss = triplet_margin_loss(s[:, 0], s[:, 1], s[:, 2:]) + self.sample_weights[batch["index"]] * distillation_loss(s, t)
        return loss.mean()

    def configure_optimizers(self):
        return torch.optim.Adam(self.student.parameters(), lr=1e-3)


def test_third_party_datamodule_and_task_run_mining_and_weighting(tiny_world, tmp_path):
    data = ThirdPartyData(tiny_world)
    task = ThirdPartyTask(data.tuples.num_training_queries)
    assert isinstance(data, TrainingData) and isinstance(task, DistillationTask)
    assert all(isinstance(b, Bank) for b in task.banks.values())
    mining, weighting = HardNegativeMining(), SampleWeighting(ranks="subepoch")
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[mining, weighting],
    )
    trainer.fit(task, datamodule=data)
    assert mining.refreshes == 2 and data.tuples.subepoch == 1 and data.tuples.mined
    assert weighting.subepoch == 1 and (task.sample_weights != 1).any()
    assert abs(task.sample_weights.mean().item() - 1) < 1e-5  # mean-1 weights over the sub-epoch
