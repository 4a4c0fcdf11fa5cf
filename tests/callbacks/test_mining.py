import numpy as np
import pytorch_lightning as pl
import torch

from structvpr.callbacks import HardNegativeMining
from structvpr.tasks import StructVPRStudent
from tests.tasks.helpers import _dm, _trainer


def test_sampled_mining_encodes_only_its_queries_and_pool(tiny_world, tmp_path):
    class Probe(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):  # runs after the mining callback
            _, known, desc = pl_module._train_descriptors
            dm = trainer.datamodule
            self.encoded, self.bank = len(known), len(dm.train_images)
            self.expected = 15 + round(0.1 * len(dm.train_dataset))
            full = pl_module.encode_loader(dm.train_images_dataloader())
            torch.testing.assert_close(desc, full[torch.from_numpy(known)], atol=1e-5, rtol=1e-4)
            again = pl_module.training_descriptors(known[:3])  # already encoded: served from the epoch's cache
            torch.testing.assert_close(again, desc[:3])
            self.after = len(pl_module._train_descriptors[1])
            assert np.all(np.diff(known) > 0)

    probe = Probe()
    mining = HardNegativeMining(query_fraction=0.1, pool_size=15)
    _trainer(tmp_path, callbacks=[mining, probe], enable_checkpointing=False).fit(StructVPRStudent(), datamodule=_dm(tiny_world))
    assert probe.encoded == probe.expected < probe.bank and probe.after == probe.encoded


def test_mine_hardest_known_answer():
    from structvpr.callbacks.mining import mine_hardest

    pool = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])  # 1-d descriptors, database ids 10..14
    pool_ids = np.array([10, 11, 12, 13, 14])
    queries = torch.tensor([[0.9], [2.9]])
    # Query 0: nearest are ids 11, 10, 12, but 11 lies within the negative radius.
    # Query 1: only 14 is allowed, fewer than m=2: its current negatives are kept.
    out = mine_hardest(queries, pool, pool_ids, [np.array([11]), np.array([10, 11, 12, 13])], 2,
                       [np.array([1, 2]), np.array([7, 8])])  # fmt: skip
    assert out.tolist() == [[10, 12], [7, 8]]
