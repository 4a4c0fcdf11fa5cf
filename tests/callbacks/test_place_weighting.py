"""Per-image weights in place batches: known-answer ranks over a window, cross-fitted teacher ranks, the callback."""

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from structvpr.callbacks import PlaceWeighting
from structvpr.callbacks.place_weighting import crossfit_ranks, window_positives, window_ranks
from structvpr.callbacks.weighting import mean_one, sample_weights
from structvpr.data.places import PlaceDataModule, place_fold
from structvpr.tasks.place import PlaceTeacher
from structvpr.tasks.place_distill import PlaceDistillation


def _angles(degrees):
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], 1).float()


#: Six images of three places 1 km apart, on the unit circle at these angles.
PLACE = np.array([0, 0, 1, 1, 2, 2])
UTM = np.array([[0.0, 0], [1, 0], [1000, 0], [1001, 0], [2000, 0], [2001, 0]])
ANGLES = [0, 50, 12, 105, 27, 200]


def test_window_ranks_have_known_answers():
    positives = window_positives(PLACE, UTM, radius=25.0)
    assert [p.tolist() for p in positives] == [[1], [0], [3], [2], [5], [4]]
    ranks = window_ranks(_angles(ANGLES), positives, max_rank=10)
    # image 0 (0 deg) retrieves 2 (12), 4 (27), 1 (50): its place-mate is 3rd; image 1 (50) retrieves
    # 4 (23 away), 2 (38), 0 (50): 3rd; image 2 (12): 0 (12), 4 (15), 1 (38), 3 (93): 4th; image 3 (105):
    # 1 (55), 4 (78), 2 (93): 3rd; image 4 (27): 2, 1, 0, 3, 5 (173): 5th; image 5 (200): 3 (95), 1 (150), ...
    # 4 (173) last of 5
    assert ranks.tolist() == [3, 3, 4, 3, 5, 5]
    # a shallower search: ranks past max_rank are max_rank + 1
    assert window_ranks(_angles(ANGLES), positives, max_rank=3).tolist() == [3, 3, 4, 3, 4, 4]


def test_an_image_of_another_place_within_the_radius_is_a_positive_too():
    utm = UTM.copy()
    utm[2] = [10.0, 0]  # image 2 (place 1) stands 10 m from place 0
    positives = window_positives(PLACE, utm, radius=25.0)
    assert positives[0].tolist() == [1, 2] and positives[2].tolist() == [0, 1, 3]
    assert window_ranks(_angles(ANGLES), positives, max_rank=10)[0] == 1  # image 2 is now image 0's first hit


def test_window_ranks_match_a_brute_force_count():
    rng = np.random.default_rng(0)
    n = 40
    place = rng.integers(0, 8, n)
    utm = np.stack([place * 100.0 + rng.uniform(0, 5, n), np.zeros(n)], 1)
    desc = F.normalize(torch.randn(n, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    positives = window_positives(place, utm, radius=25.0)
    got = window_ranks(desc, positives, max_rank=n)
    sim = (desc @ desc.T).numpy()
    for i in range(n):
        order = [j for j in np.argsort(-sim[i], kind="stable") if j != i]
        hits = [r for r, j in enumerate(order, 1) if place[j] == place[i]]
        assert got[i] == (hits[0] if hits else n + 1)


def test_crossfit_ranks_take_each_images_rank_from_its_own_folds_teacher():
    positives = window_positives(PLACE, UTM, radius=25.0)
    good = _angles([0, 1, 90, 91, 180, 181])  # every place-mate first: rank 1
    bad = _angles(ANGLES)  # the ranks above
    calls = []

    def teacher(desc):
        def encode(positions):
            calls.append(positions.tolist())
            return desc[positions]

        return encode

    folds = place_fold(PLACE, 2)  # places 0, 1, 2 -> folds 0, 1, 0
    assert folds.tolist() == [0, 0, 1, 1, 0, 0]
    ranks = crossfit_ranks([teacher(good), teacher(bad)], folds, positives, max_rank=10)
    # fold-0 images (places 0 and 2) ranked by the good teacher, fold-1 images (place 1) by the bad one
    assert ranks.tolist() == [1, 1, 4, 3, 1, 1]
    assert calls == [list(range(6))] * 2  # every teacher retrieves over the whole window


def _dm(world, **kw):
    args = dict(places_per_batch=3, images_per_place=2, place_size_m=8.0, image_size=(32, 64), with_labels=True, num_workers=0)
    return PlaceDataModule(root=str(world), **{**args, **kw})


def _trainer(out, callbacks=(), **kw):
    return pl.Trainer(
        max_epochs=1,
        default_root_dir=str(out),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        accelerator="cpu",
        callbacks=list(callbacks),
        **kw,
    )


@pytest.fixture(scope="module")
def fold_teachers(tiny_world, tmp_path_factory):
    """The full teacher and two fold teachers, each trained one epoch without one fold of places."""
    out = tmp_path_factory.mktemp("fold-teachers")
    paths = []
    for name, kw in (
        ("full", {}),
        ("fold0", dict(place_folds=2, held_out_place_fold=0)),
        ("fold1", dict(place_folds=2, held_out_place_fold=1)),
    ):
        pl.seed_everything(0)
        trainer = _trainer(out / name)
        trainer.fit(PlaceTeacher(num_groups=5), datamodule=_dm(tiny_world, **kw))
        trainer.save_checkpoint(out / f"{name}.ckpt")
        paths.append(str(out / f"{name}.ckpt"))
    return paths


def test_the_callback_weights_every_window_with_the_triplet_paths_formula_and_mean_one(fold_teachers, tiny_world, tmp_path):
    pl.seed_everything(0)
    task = PlaceDistillation(teacher_ckpt=fold_teachers[0], bank_batches=2)
    weighting = PlaceWeighting(tau=2, max_rank=20)
    trainer = _trainer(tmp_path, [weighting])
    trainer.fit(task, datamodule=_dm(tiny_world))
    steps = trainer.global_step
    assert len(weighting.history) == -(-steps // 2)
    dataset = task.datamodule.train_dataset
    for window, record in enumerate(weighting.history):
        assert record["window"] == window
        assert record["image_ids"].tolist() == np.unique(dataset.batches()[2 * window : 2 * window + 2]).tolist()
        r_t, r_s = torch.from_numpy(record["teacher_ranks"]), torch.from_numpy(record["student_ranks"])
        want = mean_one(sample_weights(r_t, r_s, tau=2))
        assert torch.allclose(torch.from_numpy(record["weights"]), want)
        assert (record["weights"][record["teacher_ranks"] > 2] == 0).all()
    # the teacher's ranks are those of its descriptors of the window's un-augmented label maps
    first = weighting.history[0]
    ids = first["image_ids"]
    with torch.no_grad():
        maps = torch.stack([task.datamodule.train_images[int(i)]["label"] for i in ids])
        desc = task.teacher.eval().pooled(maps)
    positives = window_positives(dataset.place_of[ids], dataset.bank.utm[torch.from_numpy(ids)].numpy(), 25.0)
    assert window_ranks(desc, positives, 20).tolist() == first["teacher_ranks"].tolist()
    stats = weighting.last_stats
    assert stats["weighting/per_image"] == 1.0 and stats["weighting/crossfit"] == 0.0
    assert stats["weighting/rank_database_size"] == len(weighting.history[-1]["image_ids"])


def test_crossfit_teachers_rank_only_the_places_they_never_trained_on(fold_teachers, tiny_world, tmp_path):
    full, fold0, fold1 = fold_teachers
    pl.seed_everything(0)
    task = PlaceDistillation(teacher_ckpt=full, bank_batches=100)  # one window: the whole epoch
    weighting = PlaceWeighting(tau=2, max_rank=20, crossfit_teachers=[fold0, fold1])
    _trainer(tmp_path, [weighting]).fit(task, datamodule=_dm(tiny_world))
    [record] = weighting.history
    ids = record["image_ids"]
    dataset = task.datamodule.train_dataset
    place = dataset.place_of[ids]
    folds = place_fold(place, 2)
    positives = window_positives(place, dataset.bank.utm[torch.from_numpy(ids)].numpy(), 25.0)
    maps = torch.stack([task.datamodule.train_images[int(i)]["label"] for i in ids])
    for k, path in enumerate((fold0, fold1)):
        encoder = PlaceTeacher.load_from_checkpoint(path, weights_only=True).encoder.eval()
        with torch.no_grad():
            ranks = window_ranks(encoder.pooled(maps), positives, 20)
        assert (record["teacher_ranks"][folds == k] == ranks.numpy()[folds == k]).all()
        # teacher k never trained on a fold-k place: its training set held none of these images
        held = _dm(tiny_world, place_folds=2, held_out_place_fold=k)
        held.setup("fit")
        trained = set(np.concatenate(held.train_dataset.places.images).tolist())
        assert not trained & set(ids[folds == k].tolist())
    assert weighting.last_stats["weighting/crossfit"] == 1.0
    with pytest.raises(ValueError, match="at least 2 checkpoints"):
        PlaceWeighting(crossfit_teachers=[fold0])


def test_the_callback_refuses_a_task_that_is_not_place_distillation(fold_teachers, tiny_world, tmp_path):
    with pytest.raises(TypeError, match="it needs a PlaceDistillation, got PlaceTeacher"):
        _trainer(tmp_path, [PlaceWeighting()], max_steps=1).fit(PlaceTeacher(), datamodule=_dm(tiny_world))
