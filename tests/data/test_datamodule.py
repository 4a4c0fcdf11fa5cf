import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from structvpr.data import VPRDataModule
from structvpr.data.datasets import joint_transform
from structvpr.data.vg import read_split, utm_array


@pytest.fixture
def dm(tiny_world):
    dm = VPRDataModule(root=str(tiny_world), image_size=(32, 64), batch_size=4, eval_batch_size=16,
                       num_negatives=3, synthetic_preset=None)
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
    for i, q in enumerate(ds.query_ids):
        assert ds.positives[i].tolist() == np.flatnonzero(dist[q] <= 10.0).tolist()
        assert (dist[q, ds.negatives[i].numpy()] > 25.0).all()
        allowed = set(np.flatnonzero(dist[q] > 25.0).tolist())
        assert set(ds.negative_candidates(i).tolist()) == allowed


def test_train_batch_keys_and_shapes(dm):
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "label", "index", "image_index"}
    assert batch["image"].shape == (4, 5, 3, 32, 64)
    assert batch["label"].shape == (4, 5, 5, 32, 64)
    # one-hot: at most one group per pixel
    assert batch["label"].sum(2).max() <= 1
    ds = dm.train_dataset
    for row, i in zip(batch["image_index"], batch["index"]):
        assert row[0] == ds.bank.num_database + ds.query_ids[i]
        assert row[1].item() in ds.positives[i]
        assert row[2:].tolist() == ds.negatives[i].tolist()


def test_eval_batches_cover_database_then_queries(dm):
    ds = dm.test_dataset
    batches = list(dm.test_dataloader())
    index = torch.cat([b["index"] for b in batches])
    is_query = torch.cat([b["is_query"] for b in batches])
    assert index.tolist() == list(range(len(ds)))
    assert is_query.tolist() == [False] * ds.num_database + [True] * ds.num_queries
    assert batches[0]["utm"].dtype == torch.float64


def test_refreshed_negatives_reach_worker_processes(tiny_world):
    dm = VPRDataModule(root=str(tiny_world), image_size=(32, 64), batch_size=4, num_negatives=3,
                       num_workers=2, synthetic_preset=None)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    first = torch.cat([b["image_index"][:, 2:] for b in loader])  # workers start here
    ds = dm.train_dataset
    new = torch.stack([torch.from_numpy(ds.negative_candidates(i)[-3:]) for i in range(len(ds))])
    assert not torch.equal(new, ds.negatives)
    ds.set_negatives(torch.arange(len(ds)), new)
    seen = {}
    for b in loader:  # same persistent workers, second epoch
        for i, row in zip(b["index"].tolist(), b["image_index"][:, 2:]):
            seen[i] = row
    assert len(seen) == len(ds)
    assert all(torch.equal(seen[i], new[i]) for i in range(len(ds)))
    assert first.shape[1] == 3


def test_set_negatives_checks_shape(dm):
    with pytest.raises(ValueError, match=r"negatives must be \(2, 3\)"):
        dm.train_dataset.set_negatives(torch.tensor([0, 1]), torch.zeros(2, 4, dtype=torch.long))


def test_joint_transform_moves_mask_with_image_and_leaves_ids_alone():
    torch.manual_seed(0)
    # a vertical stripe pattern: the mask id equals the stripe, so alignment is checkable
    cols = torch.arange(64) // 8
    mask = cols.expand(32, 64).to(torch.uint8)
    image = (cols * 30).to(torch.uint8).expand(3, 32, 64).clone()
    t = joint_transform((32, 64), train=True)
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
