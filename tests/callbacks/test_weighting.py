import math

import pytest
import torch

from structvpr.bank import encode_loader
from structvpr.callbacks.weighting import (
    CONSISTENT,
    NOISY,
    TEACHABLE,
    SampleWeighting,
    mean_one,
    partition,
    sample_weights,
)


def test_groups_and_weights_known_answers():
    r_t = torch.tensor([1, 1, 2, 5, 6, 100, 3])
    r_s = torch.tensor([1, 10, 1, 5, 1, 1, 101])
    groups = partition(r_t, r_s, tau=5)
    assert groups.tolist() == [CONSISTENT, TEACHABLE, CONSISTENT, CONSISTENT, NOISY, NOISY, TEACHABLE]
    w = sample_weights(r_t, r_s, tau=5, alpha=1.0)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    want = [0.5, sig(math.log(10)), sig(math.log(0.5)), 0.5, 0.0, 0.0, sig(math.log(101 / 3))]
    assert w.tolist() == pytest.approx(want, abs=1e-6)
    # by construction: teachable > 0.5, consistent <= 0.5
    assert (w[groups == TEACHABLE] > 0.5).all() and (w[groups == CONSISTENT] <= 0.5).all()


def test_alpha_sharpens():
    r_t, r_s = torch.tensor([1]), torch.tensor([4])
    assert sample_weights(r_t, r_s, alpha=4.0).item() > sample_weights(r_t, r_s, alpha=1.0).item()
    assert sample_weights(r_t, r_s, alpha=1.0).item() == pytest.approx(0.8)  # sigmoid(ln 4) = 4/5


def test_bad_constants_raise():
    with pytest.raises(ValueError, match="tau must be >= 1"):
        SampleWeighting(tau=0)
    with pytest.raises(ValueError, match="max_rank must be >= tau"):
        SampleWeighting(tau=10, max_rank=5)
    with pytest.raises(ValueError, match="ranks must be 'subepoch' or 'global'"):
        SampleWeighting(ranks="all")


def test_mean_one_rescales_and_keeps_noisy_at_zero():
    w = mean_one(torch.tensor([0.0, 0.5, 0.25, 0.25]))
    assert w.tolist() == [0.0, 2.0, 1.0, 1.0] and w.mean().item() == 1.0
    assert mean_one(torch.zeros(3)).tolist() == [0.0, 0.0, 0.0]


def test_subepoch_ranks_against_global_ranks_on_a_small_bank(trained, tiny_world, tmp_path):
    import numpy as np
    import pytorch_lightning as pl

    from structvpr.callbacks import HardNegativeMining
    from structvpr.metrics.recall import first_positive_rank
    from structvpr.tasks import StructVPRDistillation
    from tests.tasks.helpers import _dm, _trainer

    class Compare(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):  # after mining and weighting
            dm, ds = trainer.datamodule, trainer.datamodule.train_dataset
            n_db = ds.bank.num_database
            queries = ds.tuples[:, 0].numpy()
            q_ids = ds.query_image_index(queries)
            utm = ds.bank.utm
            subset = ds.subepoch_database
            out, sub = {}, {}
            for name, encoder, key in (("student", pl_module.encoder, "image"), ("teacher", pl_module.teacher, "label")):
                desc = encode_loader(encoder, dm.train_images_dataloader(None, key), key)
                out[name], _ = first_positive_rank(desc[q_ids], desc[:n_db], 100, query_utm=utm[q_ids], database_utm=utm[:n_db])
                sub[name], _ = first_positive_rank(desc[q_ids], desc[subset], 100, query_utm=utm[q_ids], database_utm=utm[subset])
            self.global_ranks, self.recomputed = out, sub
            self.sampled = {"student": weighting.student_ranks[queries], "teacher": weighting.teacher_ranks[queries]}
            self.database = len(ds.subepoch_database), n_db

    weighting, compare = SampleWeighting(ranks="subepoch"), Compare()
    model = StructVPRDistillation(teacher_ckpt=trained["teacher"], student_ckpt=trained["baseline"])
    dm = _dm(tiny_world, cache_queries=12)
    _trainer(
        tmp_path,
        callbacks=[HardNegativeMining(cache_negatives=4), weighting, compare],
        enable_checkpointing=False,
        limit_val_batches=0,
    ).fit(model, datamodule=dm)
    sampled_db, full_db = compare.database
    assert sampled_db < full_db
    for name in ("student", "teacher"):
        # the weighting's ranks are those over the sub-epoch's set, recomputed from scratch
        assert compare.sampled[name].tolist() == compare.recomputed[name].tolist()
    groups_s = partition(compare.sampled["teacher"], compare.sampled["student"], 5)
    groups_g = partition(compare.global_ranks["teacher"], compare.global_ranks["student"], 5)
    agreement = (groups_s == groups_g).float().mean().item()
    print(
        f"sub-epoch set {sampled_db} of {full_db} database images; group agreement {agreement:.2f}; "
        f"noisy {int((groups_s == NOISY).sum())} sampled vs {int((groups_g == NOISY).sum())} global"
    )
    assert agreement >= 0.5
    assert np.isin(groups_s.numpy(), [NOISY, TEACHABLE, CONSISTENT]).all()


def test_per_image_unit_needs_subepoch_ranks_without_fold_teachers():
    with pytest.raises(ValueError, match="unit must be 'query' or 'image'"):
        SampleWeighting(unit="tuple")
    with pytest.raises(ValueError, match="needs ranks='subepoch' and no crossfit_teachers"):
        SampleWeighting(unit="image", ranks="global")
    with pytest.raises(ValueError, match="needs ranks='subepoch' and no crossfit_teachers"):
        SampleWeighting(unit="image", crossfit_teachers=["a.ckpt", "b.ckpt"])


def test_positions_of_ids_in_a_database_known_answer():
    import numpy as np

    from structvpr.callbacks.weighting import _positions

    database = np.array([7, 2, 9, 4])
    assert _positions(database, np.array([2, 4, 5, 9, 7, 30])).tolist() == [1, 3, -1, 2, 0, -1]
    assert _positions(np.zeros(0, dtype=np.int64), np.array([1, 2])).tolist() == [-1, -1]


def test_per_image_weights_rank_every_tuple_image_without_itself(trained, tiny_world, tmp_path):
    """unit='image': each image of the sub-epoch's tuples, database images included, gets the weight
    of its own ranks over the sub-epoch's database set without itself (brute-force numpy ranking)."""
    import numpy as np
    import pytorch_lightning as pl

    from structvpr.callbacks import HardNegativeMining
    from structvpr.tasks import StructVPRDistillation
    from tests.tasks.helpers import _dm, _trainer

    def brute_ranks(desc, ids, database, utm, max_rank=100, radius=25.0):
        out = []
        for i in ids:
            others = database[database != i]
            d = ((desc[others] - desc[i]) ** 2).sum(1)
            order = others[np.argsort(d, kind="stable")][:max_rank]
            hit = np.flatnonzero(np.linalg.norm(utm[order] - utm[i], axis=1) <= radius)
            out.append(int(hit[0]) + 1 if len(hit) else max_rank + 1)
        return np.array(out)

    class Check(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):  # after mining and weighting
            dm, ds = trainer.datamodule, trainer.datamodule.train_dataset
            table = ds.tuples.numpy()
            ids = np.union1d(table[:, 1:].ravel(), ds.query_image_index(table[:, 0]))
            utm, database = ds.utm.numpy().astype(np.float64), ds.subepoch_database
            ranks = {}
            for name, encoder, key in (("student", pl_module.encoder, "image"), ("teacher", pl_module.teacher, "label")):
                desc = encode_loader(encoder, dm.train_images_dataloader(None, key), key).numpy()
                ranks[name] = brute_ranks(desc.astype(np.float64), ids, database, utm)
            self.ids, self.ranks = ids, ranks
            self.image_weights = pl_module.image_weights.clone()
            self.sample_weights = pl_module.sample_weights.clone()
            self.num_database = ds.num_database

    weighting, check = SampleWeighting(unit="image", tau=2), Check()
    model = StructVPRDistillation(teacher_ckpt=trained["teacher"], student_ckpt=trained["baseline"])
    _trainer(
        tmp_path,
        callbacks=[HardNegativeMining(cache_negatives=4), weighting, check],
        enable_checkpointing=False,
        limit_val_batches=0,
    ).fit(model, datamodule=_dm(tiny_world, cache_queries=12))
    h = weighting.history[0]
    assert h["image_ids"].tolist() == check.ids.tolist()
    assert (check.ids < check.num_database).sum() > 0  # database images are weighted too
    assert h["student_ranks"].tolist() == check.ranks["student"].tolist()
    assert h["teacher_ranks"].tolist() == check.ranks["teacher"].tolist()
    want = mean_one(sample_weights(torch.from_numpy(check.ranks["teacher"]), torch.from_numpy(check.ranks["student"]), tau=2))
    assert check.image_weights[torch.from_numpy(check.ids)].tolist() == pytest.approx(want.tolist(), abs=1e-6)
    others = np.setdiff1d(np.arange(len(check.image_weights)), check.ids)
    assert (check.image_weights[torch.from_numpy(others)] == 1).all()
    assert (check.sample_weights == 1).all()  # the per-query weights stay 1 in this unit
