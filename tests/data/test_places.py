"""Place batches: P distinct places x K images, far-apart places, drops counted, exact resumption."""

import numpy as np
import pytest
import torch

from structvpr.data.datasets import is_geometric
from structvpr.data.places import (
    PlaceBatchDataset,
    PlaceBatchSampler,
    PlaceDataModule,
    epoch_batches,
    labelled_places,
    place_fold,
    utm_places,
)


def _street(n=400, seed=0):
    """Images scattered along two crossing streets (east-west and north-south), 0.5 images per metre."""
    rng = np.random.default_rng(seed)
    along = rng.uniform(0, 200, n)
    ew = np.stack([along, rng.normal(0, 1, n)], 1)
    ns = np.stack([rng.normal(100, 1, n), along - 100], 1)
    return np.concatenate([ew, ns]) + np.array([585000.0, 4477000.0])


def test_utm_places_drop_small_cells_and_count_them():
    # cells of 10 m: three images in [0, 10), one in [10, 20), two in [30, 40)
    utm = np.array([[1.0, 1], [5, 2], [9, 9], [12, 3], [31, 1], [35, 2]])
    places = utm_places(utm, 10.0, 3, min_images=2)
    assert [p.tolist() for p in places.images] == [[0, 1, 2], [4, 5]]
    assert (places.dropped, places.dropped_images) == (1, 1)
    # group = (cell_east mod 3) * 3 + cell_north mod 3: cells (0, 0) and (3, 0) share group 0
    assert places.group.tolist() == [0, 0]
    assert places.place_of(6).tolist() == [0, 0, 0, -1, 1, 1]
    with pytest.raises(ValueError, match="group_spacing must be >= 2"):
        utm_places(utm, 10.0, 1, 2)


def test_gsv_cities_places_keep_their_ids_and_batch_within_a_city():
    ids = [7, 7, 7, 8, 8, 9, 7, 7]
    city = ["a", "a", "a", "a", "a", "a", "b", "b"]
    places = labelled_places(ids, city, min_images=2)
    assert [p.tolist() for p in places.images] == [[0, 1, 2], [3, 4], [6, 7]]  # place 9 of a dropped
    assert places.group.tolist() == [0, 0, 1] and places.dropped == 1


@pytest.mark.parametrize("seed", [0, 1])
def test_every_batch_holds_p_far_apart_places_of_k_images_and_no_place_twice(seed):
    utm = _street(seed=seed)
    size, spacing, p, k = 10.0, 3, 4, 3
    places = utm_places(utm, size, spacing, min_images=k)
    owner = places.place_of(len(utm))
    batches = epoch_batches(places, p, k, seed=seed, epoch=2)
    assert batches.shape[1:] == (p, k) and len(batches) > 5
    seen = []
    for batch in batches:
        place_ids = owner[batch]
        assert (place_ids >= 0).all()
        assert all(len(set(row)) == 1 for row in place_ids.tolist())  # K images of one place ...
        assert all(len(set(row)) == k for row in batch.tolist())  # ... all different
        assert len(set(place_ids[:, 0])) == p  # P distinct places
        seen += place_ids[:, 0].tolist()
        # independent of the grouping code: images of different places lie >= (N - 1) * size apart
        for a in range(p):
            for b in range(a + 1, p):
                d = np.linalg.norm(utm[batch[a]][:, None] - utm[batch[b]][None], axis=-1)
                assert d.min() >= (spacing - 1) * size
    assert len(seen) == len(set(seen))  # every place at most once per epoch
    # a group's places fill floor(n / P) batches: only its remainder waits for another epoch
    per_group = np.bincount(places.group)
    assert len(batches) == sum(n // p for n in per_group)
    assert not np.array_equal(batches, epoch_batches(places, p, k, seed=seed, epoch=3))


def test_a_fresh_datamodule_serves_the_same_epoch_batches_as_an_uninterrupted_one(tiny_world):
    """What a run killed after epoch 1 and resumed sees: the same images, with the same augmentation."""

    def dm():
        out = PlaceDataModule(
            places_per_batch=3, images_per_place=2, place_size_m=8.0, root=str(tiny_world), image_size=(32, 64), seed=5
        )
        out.setup("fit")
        return out.train_dataset

    running = dm()
    for epoch in range(3):
        running.set_epoch(epoch)
        uninterrupted = [running[b] for b in range(len(running))]
    resumed = dm()
    resumed.set_epoch(2)
    for b, item in enumerate(uninterrupted):
        again = resumed[b]
        assert torch.equal(item["image_index"], again["image_index"]) and torch.equal(item["image"], again["image"])
        assert torch.equal(item["label"], again["label"])
        assert torch.equal(item["place"][:, 0].unique(), item["place"][:, 0].sort().values)  # P distinct places
    # a label map per view, one-hot (void pixels all zero)
    assert item["label"].shape[:2] == item["image"].shape[:2] and torch.all(item["label"].sum(2) <= 1)


def test_the_place_batch_sampler_strides_whole_batches_over_processes_with_no_padding(tiny_world):
    dm = PlaceDataModule(places_per_batch=2, images_per_place=2, place_size_m=8.0, root=str(tiny_world), image_size=(32, 64))
    dm.setup("fit")
    ds = dm.train_dataset
    n = len(ds)
    assert n >= 5
    share = [list(PlaceBatchSampler(ds, num_replicas=2, rank=r)) for r in range(2)]
    # step t: process r holds batch 2t + r; the odd last batch is left out so both run n // 2 steps
    assert share == [list(range(0, 2 * (n // 2), 2)), list(range(1, 2 * (n // 2), 2))]
    assert list(PlaceBatchSampler(ds)) == list(range(n))  # one process: every batch, in order
    places = [set(ds[b]["place"][:, 0].tolist()) for r in range(2) for b in share[r]]
    assert all(len(p) == 2 for p in places)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, PlaceBatchSampler)


def test_a_held_out_place_fold_removes_exactly_its_places(tiny_world):
    def places_of(**kw):
        dm = PlaceDataModule(
            places_per_batch=2, images_per_place=2, place_size_m=8.0, root=str(tiny_world), image_size=(32, 64), **kw
        )
        dm.setup("fit")
        return dm.train_dataset

    full = places_of()
    folds = place_fold(np.arange(len(full.places)), 2)
    assert folds.tolist() == [p % 2 for p in range(len(full.places))]
    for k in range(2):
        held = places_of(place_folds=2, held_out_place_fold=k)
        kept = {tuple(ids) for ids in held.places.images}
        want = {tuple(ids) for ids, f in zip(full.places.images, folds) if f != k}
        assert kept == want and held.places.dropped == full.places.dropped + int((folds == k).sum())
    with pytest.raises(ValueError, match="held_out_place_fold must lie in 0 .. place_folds - 1 = 1"):
        PlaceDataModule(root=str(tiny_world), place_folds=2, held_out_place_fold=2)
    with pytest.raises(ValueError, match="place batches hold out places, not queries"):
        PlaceDataModule(root=str(tiny_world), query_folds=2, held_out_fold=0)


def test_too_few_places_for_a_batch_is_an_error_that_says_what_to_change(tiny_world):
    dm = PlaceDataModule(places_per_batch=40, images_per_place=2, place_size_m=8.0, root=str(tiny_world), image_size=(32, 64))
    with pytest.raises(ValueError, match="no group has 40 places of >= 2 images .* lower P or K"):
        dm.setup("fit")
    with pytest.raises(ValueError, match="give both gsv_cities_root and gsv_cities"):
        PlaceDataModule(gsv_cities_root="somewhere")
    assert isinstance(PlaceBatchDataset, type)


def test_training_and_evaluation_sizes_differ_when_asked_and_rand_augment_moves_label_maps(tiny_world):
    kw = dict(places_per_batch=3, images_per_place=2, place_size_m=8.0, root=str(tiny_world), image_size=(28, 56))
    dm = PlaceDataModule(eval_image_size=(42, 84), with_labels=False, rand_augment=(3, 15), **kw)
    dm.setup("fit")
    assert dm.train_dataset[0]["image"].shape[-2:] == (28, 56)
    assert dm.val_dataset[0]["image"].shape[-2:] == (42, 84)
    # with labels: geometric RandAugment moves some label maps; photometric-only leaves every one as read
    moved = {}
    for geometric in (True, False):
        dm = PlaceDataModule(with_labels=True, augment=False, rand_augment=(2, 15), rand_augment_geometric=geometric, **kw)
        dm.setup("fit")
        ds = dm.train_dataset
        assert is_geometric(ds.bank.transform) is geometric
        item = ds[0]
        plain = torch.stack([dm.train_images[int(i)]["label"] for i in item["image_index"].flatten()])
        moved[geometric] = int((item["label"].flatten(0, 1) != plain).flatten(1).any(1).sum())
    assert moved[False] == 0 and moved[True] > 0


def test_a_places_k_views_mix_its_query_and_database_visits():
    places = labelled_places([0] * 6 + [1] * 5, None, min_images=4)
    is_query = np.array([0, 0, 0, 0, 1, 1] + [0, 1, 1, 1, 1], dtype=bool)  # place 1 has one database image
    for epoch in range(5):
        [batch] = epoch_batches(places, 2, 4, seed=0, epoch=epoch, is_query=is_query)
        for views in batch:
            kinds = is_query[views]
            assert len(set(views.tolist())) == 4
            if views[0] < 6:
                assert kinds.sum() == 2  # K // 2 queries, K - K // 2 database images
            else:
                assert (~kinds).sum() == 1 and kinds.sum() == 3  # its one database image, topped up with queries
