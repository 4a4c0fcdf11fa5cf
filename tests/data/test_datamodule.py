import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from structvpr.data import VPRDataModule
from structvpr.data.datasets import joint_transform
from structvpr.data.vg import read_split, utm_array


@pytest.fixture
def dm(tiny_world):
    dm = VPRDataModule(
        root=str(tiny_world), image_size=(32, 64), batch_size=4, eval_batch_size=16, num_negatives=3, synthetic_preset=None
    )
    dm.setup("fit")
    dm.setup("test")
    return dm


def test_positives_and_negatives_match_brute_force(dm, tiny_world):
    ds = dm.train_dataset
    db = utm_array(read_split(tiny_world, "train", "database"))
    qs = utm_array(read_split(tiny_world, "train", "queries"))
    dist = np.sqrt(((qs[:, None] - db[None]) ** 2).sum(-1))
    has_pos = (dist <= 10.0).any(1)
    assert ds.query_ids.tolist() == np.flatnonzero(has_pos).tolist()
    rng = np.random.default_rng(0)
    for i, q in enumerate(ds.query_ids):
        assert ds.positives[i].tolist() == np.flatnonzero(dist[q] <= 10.0).tolist()
        assert (dist[q, ds.random_negatives(i, rng)] > 25.0).all()
    # the starting sub-epoch: every training query once, a GPS positive and negatives beyond 25 m
    table = ds.tuples.numpy()
    assert sorted(table[:, 0].tolist()) == list(range(ds.num_training_queries)) and len(ds) == len(table)
    for q, p, *negs in table.tolist():
        assert p in ds.positives[q].tolist() and (dist[ds.query_ids[q], negs] > 25.0).all()


def test_train_batch_keys_and_shapes(dm):
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "label", "index", "image_index"}
    assert batch["image"].shape == (4, 5, 3, 32, 64)
    assert batch["label"].shape == (4, 5, 5, 32, 64)
    # one-hot: at most one group per pixel
    assert batch["label"].sum(2).max() <= 1
    ds = dm.train_dataset
    rows = {row[0]: row for row in ds.tuples.tolist()}
    for image_index, i in zip(batch["image_index"].tolist(), batch["index"].tolist()):
        assert image_index[0] == ds.bank.num_database + ds.query_ids[i]
        assert image_index[1:] == rows[i][1:]


def test_subepochs_cover_every_query_once_per_pass(tiny_world):
    dm = VPRDataModule(root=str(tiny_world), image_size=(32, 64), cache_queries=5, synthetic_preset=None)
    dm.setup("fit")
    ds = dm.train_dataset
    n = ds.num_training_queries
    assert len(ds) == 5 and n > 5
    drawn = np.concatenate([ds.subepoch_queries(k) for k in range(-(-2 * n // 5))])
    first, second = drawn[:n], drawn[n : 2 * n]
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(n))  # each pass: every query once
    assert not np.array_equal(first, second)  # a new order each pass
    assert all(len(set(ds.subepoch_queries(k).tolist())) == 5 for k in range(20))  # distinct within a sub-epoch
    ds.random_subepoch(3)
    assert ds.subepoch == 3 and not ds.mined and ds.tuples[:, 0].tolist() == ds.subepoch_queries(3).tolist()


def test_eval_batches_cover_database_then_queries(dm):
    ds = dm.test_dataset
    batches = list(dm.test_dataloader())
    index = torch.cat([b["index"] for b in batches])
    is_query = torch.cat([b["is_query"] for b in batches])
    assert index.tolist() == list(range(len(ds)))
    assert is_query.tolist() == [False] * ds.num_database + [True] * ds.num_queries
    assert batches[0]["utm"].dtype == torch.float64


def test_new_tuples_reach_worker_processes(tiny_world):
    dm = VPRDataModule(
        root=str(tiny_world), image_size=(32, 64), batch_size=4, num_negatives=3, num_workers=2, synthetic_preset=None
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    first = torch.cat([b["image_index"][:, 2:] for b in loader])  # workers start here
    ds = dm.train_dataset
    queries = ds.tuples[:, 0].numpy()
    allowed = [np.setdiff1d(np.arange(ds.bank.num_database), ds.non_negatives[q]) for q in queries]
    new = np.stack([a[-3:] for a in allowed])
    positives = np.array([ds.positives[q][-1] for q in queries])
    assert not np.array_equal(new, ds.tuples[:, 2:].numpy())
    ds.set_tuples(1, queries, positives, new)
    seen = {}
    for b in loader:  # same persistent workers, second epoch
        for i, row in zip(b["index"].tolist(), b["image_index"][:, 1:]):
            seen[i] = row.tolist()
    expected = {q: [p, *n] for q, p, n in zip(queries.tolist(), positives.tolist(), new.tolist())}
    assert seen == expected
    assert first.shape[1] == 3


def test_set_tuples_checks_shape_and_radii(dm):
    ds = dm.train_dataset
    queries, table = ds.tuples[:, 0].numpy(), ds.tuples.numpy()
    with pytest.raises(ValueError, match=r"\(\d+, 3\) negatives"):
        ds.set_tuples(1, queries, table[:, 1], np.zeros((len(ds), 4), dtype=np.int64))
    near = ds.non_negatives[queries[0]][0]
    bad_neg = table[:, 2:].copy()
    bad_neg[0, 0] = near
    with pytest.raises(ValueError, match=f"a negative of training query {queries[0]} lies within the negative radius"):
        ds.set_tuples(1, queries, table[:, 1], bad_neg)
    far = table[0, 2]
    bad_pos = table[:, 1].copy()
    bad_pos[0] = far
    with pytest.raises(ValueError, match=f"database image {far} is not a GPS positive of training query {queries[0]}"):
        ds.set_tuples(1, queries, bad_pos, table[:, 2:])


def test_joint_transform_moves_mask_with_image_and_leaves_ids_alone():
    torch.manual_seed(0)
    # a vertical stripe pattern: the mask id equals the stripe, so alignment is checkable
    cols = torch.arange(64) // 8
    mask = cols.expand(32, 64).to(torch.uint8)
    image = (cols * 30).to(torch.uint8).expand(3, 32, 64).clone()
    t = joint_transform((32, 64), train=True, crop_scale=0.6)
    out_img, out_mask = t(tv_tensors.Image(image), tv_tensors.Mask(mask))
    assert out_mask.dtype == torch.uint8
    assert set(out_mask.unique().tolist()) <= set(range(8))  # nearest-neighbour: no new ids
    # columns of one mask id have near-constant image values after the same geometric warp
    gray = out_img.mean(0)
    for k in out_mask.unique().tolist():
        vals = gray[out_mask == k]
        assert vals.std() < 0.35, k


def test_bad_arguments_raise_at_construction(tiny_world):
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        VPRDataModule(root=str(tiny_world), batch_size=0)
    with pytest.raises(ValueError, match="grouping must be one of"):
        VPRDataModule(root=str(tiny_world), grouping="ade")


def test_a_limited_validation_still_holds_queries_and_database(tiny_world, tmp_path):
    import pytorch_lightning as pl

    from structvpr.tasks import StructVPRStudent

    dm = VPRDataModule(root=str(tiny_world), image_size=(32, 64), eval_batch_size=8, synthetic_preset=None, with_labels=False)
    trainer = pl.Trainer(
        limit_val_batches=2, logger=False, enable_progress_bar=False, enable_checkpointing=False, default_root_dir=str(tmp_path)
    )
    result = trainer.validate(StructVPRStudent(), datamodule=dm)[0]
    # 16 of the 32 val images: database and queries in proportion, so R@1 is a number, not nan
    assert result["val/num_queries"] + result["val/num_excluded"] == 6
    assert result["val/R@1"] == result["val/R@1"]  # not nan


def test_held_out_fold_trains_without_exactly_that_fold_of_queries(tiny_world):
    from structvpr.data import VPRDataModule
    from structvpr.data.datasets import query_fold

    def training_query_names(**kw):
        dm = VPRDataModule(root=str(tiny_world), image_size=(32, 64), synthetic_preset=None, **kw)
        dm.setup("fit")
        images = dm.train_images
        return images.num_database, [images.records[i].path.name for i in range(images.num_database, len(images))]

    n_db, everything = training_query_names()
    assert len(everything) == 24
    for fold in (0, 1, 2):
        n_db_fold, kept = training_query_names(query_folds=3, held_out_fold=fold)
        assert n_db_fold == n_db  # the database is shared by every fold teacher
        assert kept == [name for i, name in enumerate(everything) if i % 3 != fold]
    assert list(query_fold(np.arange(5), 2)) == [0, 1, 0, 1, 0]
    with pytest.raises(ValueError, match="held_out_fold must lie in 0 .. query_folds - 1 = 1, got 2"):
        VPRDataModule(root=str(tiny_world), query_folds=2, held_out_fold=2)
    with pytest.raises(ValueError, match="query_folds must be >= 1"):
        VPRDataModule(root=str(tiny_world), query_folds=0)
