import numpy as np
import pytorch_lightning as pl
import torch

from structvpr.bank import DescriptorBank, encode_loader
from structvpr.callbacks import HardNegativeMining
from structvpr.callbacks.mining import mine_hardest, nearest_positive
from structvpr.tasks import StructVPRStudent
from tests.tasks.helpers import _trainer


def _dm43(root, **kw):
    from structvpr.data import VPRDataModule

    return VPRDataModule(
        root=str(root),
        image_size=(48, 64),
        batch_size=2,
        eval_batch_size=16,
        num_negatives=3,
        synthetic_preset=None,
        with_labels=False,
        **kw,
    )


def test_mine_hardest_known_answer():
    pool = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])  # 1-d descriptors, database ids 10..14
    pool_ids = np.array([10, 11, 12, 13, 14])
    queries = torch.tensor([[0.9], [2.9]])
    # Query 0: nearest are ids 11, 10, 12, but 11 lies within the negative radius.
    # Query 1: only 14 is allowed, fewer than m=2: the missing place is -1.
    out = mine_hardest(queries, pool, pool_ids, [np.array([11]), np.array([10, 11, 12, 13])], 2)
    assert out.tolist() == [[10, 12], [14, -1]]


def test_nearest_positive_known_answer():
    database_ids = np.array([2, 5, 7, 9])
    database = torch.tensor([[0.0], [4.0], [1.0], [1.0]])
    queries = torch.tensor([[1.2], [3.0]])
    # Query 0: distances 1.44 (2), 7.84 (5), 0.04 (9) -> 9. Query 1: 9 (2), 4 (7), 4 (9): a tie, the lower id wins.
    out = nearest_positive(queries, database, database_ids, [np.array([2, 5, 9]), np.array([2, 7, 9])])
    assert out.tolist() == [9, 7]


class _Probe(pl.Callback):
    """After mining, checks the sub-epoch's tuples against a brute-force search with fresh descriptors,
    and records every tuple that trains."""

    def __init__(self):
        self.checked, self.trained, self.tables = [], [], []

    def on_train_epoch_start(self, trainer, pl_module):
        ds = trainer.datamodule.train_dataset
        assert ds.subepoch == trainer.current_epoch and ds.mined
        table = ds.tuples.numpy().copy()
        self.tables.append(table)
        n_db = ds.bank.num_database
        desc = encode_loader(pl_module.encoder, trainer.datamodule.train_images_dataloader())
        for q, p, *negs in table.tolist():
            qd = desc[ds.query_image_index(q)]
            d = (desc[:n_db] - qd).pow(2).sum(1)
            gps = ds.positives[q]
            assert p == gps[int(torch.argmin(d[gps]))]  # the descriptor-nearest GPS positive
            allowed = np.setdiff1d(np.arange(n_db), ds.non_negatives[q])
            assert negs == allowed[torch.argsort(d[allowed], stable=True)[:3].numpy()].tolist()  # the hardest
        self.checked.append(trainer.current_epoch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.trained.append((trainer.current_epoch, batch["image_index"].clone(), batch["index"].clone()))


def test_every_tuple_trains_on_what_its_own_subepoch_mined(tiny43_world, tmp_path):
    # Workers start reading epoch 0's tuples before on_train_start: the table must be mined by then.
    probe = _Probe()
    dm = _dm43(tiny43_world, num_workers=2, cache_queries=8)
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
        callbacks=[HardNegativeMining(cache_negatives=None), probe],
    )
    trainer.fit(StructVPRStudent(), datamodule=dm)
    assert probe.checked == [0, 1, 2]
    ds = dm.train_dataset
    for epoch, image_index, index in probe.trained:
        rows = {row[0]: row[1:] for row in probe.tables[epoch].tolist()}
        for ids, q in zip(image_index.tolist(), index.tolist()):
            assert ids[0] == ds.query_image_index(q) and ids[1:] == rows[q]
    per_epoch = [sum(len(i) for e, _, i in probe.trained if e == k) for k in range(3)]
    assert per_epoch == [8, 8, 8]
    trained_queries = [set(probe.tables[k][:, 0].tolist()) for k in range(3)]
    assert len(trained_queries[0] | trained_queries[1] | trained_queries[2]) == 24  # one pass of 24 queries


def test_mining_encodes_only_its_queries_positives_and_pool(tiny43_world, tmp_path):
    class Count(pl.Callback):
        def on_fit_start(self, trainer, pl_module):
            self.before = pl_module.banks["student"].images_encoded  # runs before the miner's first sub-epoch (callback order)

    class After(pl.Callback):
        def on_fit_start(self, trainer, pl_module):
            ds = trainer.datamodule.train_dataset
            self.encoded = pl_module.banks["student"].images_encoded - count.before
            self.expected = len(ds) + len(ds.subepoch_database)
            positives = np.concatenate([ds.positives[q] for q in ds.tuples[:, 0].tolist()])
            self.pool = len(np.setdiff1d(ds.subepoch_database, positives))
            self.bank = len(trainer.datamodule.train_images)

    count, after = Count(), After()
    dm = _dm43(tiny43_world, cache_queries=5)
    _trainer(
        tmp_path, callbacks=[count, HardNegativeMining(cache_negatives=6), after], enable_checkpointing=False, limit_val_batches=0
    ).fit(StructVPRStudent(), datamodule=dm)
    assert after.encoded == after.expected < after.bank
    assert after.pool <= 6


def test_float16_descriptors_halve_the_sub_epoch_cache_and_mine_alike(tiny43_world, tmp_path):
    tables, dtypes = {}, {}
    for dtype in ("float32", "float16"):

        class Keep(pl.Callback):
            def on_train_epoch_start(self, trainer, pl_module, name=dtype):
                dtypes[name] = pl_module.banks["student"].array.dtype
                tables[name] = trainer.datamodule.train_dataset.tuples.clone()

        pl.seed_everything(0)
        _trainer(
            tmp_path,
            callbacks=[HardNegativeMining(descriptor_dtype=dtype), Keep()],
            enable_checkpointing=False,
            limit_val_batches=0,
        ).fit(StructVPRStudent(), datamodule=_dm43(tiny43_world))
    assert dtypes == {"float32": torch.float32, "float16": torch.float16}
    same = (tables["float32"] == tables["float16"]).all(1).float().mean().item()
    assert same >= 0.9  # rounding may reorder a near-tie, not the mining


def test_memory_mapped_descriptors_mine_the_same_tuples(tiny43_world, tmp_path, monkeypatch):
    made = []
    original = DescriptorBank._memmap_array
    monkeypatch.setattr(DescriptorBank, "_memmap_array", lambda self, *a: made.append(a) or original(self, *a))
    tables = {}
    for memmap in (None, str(tmp_path / "mm")):

        class Keep(pl.Callback):
            def on_train_epoch_start(self, trainer, pl_module, key=memmap):
                tables[key] = trainer.datamodule.train_dataset.tuples.clone()

        pl.seed_everything(0)
        miner = HardNegativeMining(cache_negatives=10, descriptor_memmap_dir=memmap)
        _trainer(tmp_path, callbacks=[miner, Keep()], enable_checkpointing=False, limit_val_batches=0).fit(
            StructVPRStudent(), datamodule=_dm43(tiny43_world, cache_queries=6)
        )
    assert made and torch.equal(tables[None], tables[str(tmp_path / "mm")])
