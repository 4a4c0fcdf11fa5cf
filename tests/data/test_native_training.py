"""Training straight from the native Pittsburgh and MSLS layouts (no VG copy)."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from structvpr.cli import cli_main
from structvpr.data import VPRDataModule
from structvpr.data.benchmarks import CITY_OFFSET_M, load_benchmark
from structvpr.data.datasets import TripletDataset
from tests.data.test_formats import _cells, _write_msls


def _image_and_label(root, rel, rng):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (12, 24, 3), dtype=np.uint8)).save(path)
    label = (root / "labels" / rel).with_suffix(".png")
    label.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 19, (12, 24), dtype=np.uint8)).save(label)


def write_pittsburgh(root, splits=("train", "val", "test"), n_db=10, seed=0):
    """Database images 40 m apart on a line; one query 3 m from every other database image."""
    rng = np.random.default_rng(seed)
    db = [f"000/{i:06d}_pitch1_yaw1.jpg" for i in range(n_db)]
    qs = [f"000/{i:06d}_pitch1_yaw1.jpg" for i in range(0, n_db, 2)]
    for n in db:
        _image_and_label(root, n, rng)
    for n in qs:
        _image_and_label(root, f"queries_real/{n}", rng)
    utm_db = np.stack([np.arange(n_db) * 40.0 + 585000, np.full(n_db, 4477000.0)])
    utm_q = np.stack([np.arange(0, n_db, 2) * 40.0 + 585003, np.full(len(qs), 4477000.0)])
    for split in splits:
        values = [split, _cells(db), utm_db, _cells(qs), utm_q, float(n_db), float(len(qs)), 25.0, 625.0, 100.0]
        struct = np.empty((1, 1), dtype=[(f"f{i}", object) for i in range(len(values))])
        for i, v in enumerate(values):
            struct[0, 0][f"f{i}"] = v
        (root / "datasets").mkdir(exist_ok=True)
        savemat(root / "datasets" / f"pitts30k_{split}.mat", {"dbStruct": struct})


def test_fit_from_native_pittsburgh_layout(tmp_path, repo_root):
    root = tmp_path / "pittsburgh"
    write_pittsburgh(root)
    cli = cli_main(
        [
            "fit",
            "--config",
            str(repo_root / "lightning_configs/synthetic/teacher.yaml"),
            "--config",
            str(repo_root / "lightning_configs/data/pitts30k.yaml"),
            f"--data.init_args.root={root}",
            "--data.init_args.image_size=[32, 64]",
            "--data.init_args.batch_size=2",
            "--data.init_args.num_workers=0",
            "--data.init_args.cache_images=false",
            "--trainer.max_epochs=1",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    dm = cli.datamodule
    # The composed configs keep the model config's data settings and add the native splits.
    assert dm.hparams.num_negatives == 4 and dm.hparams.train_benchmark == "pitts30k_train"
    bank = dm.train_dataset.bank
    assert bank.num_database == 10 and bank.num_queries == 5
    assert bank.records[10].path == root / "queries_real/000/000000_pitch1_yaw1.jpg"
    assert bank.records[0].label_path == root / "labels/000/000000_pitch1_yaw1.png"
    # Every query has exactly its 3 m neighbour as positive, and negatives lie beyond 25 m.
    assert [p.tolist() for p in dm.train_dataset.positives] == [[0], [2], [4], [6], [8]]
    utm = bank.utm.numpy()
    for q, p, *negs in dm.train_dataset.tuples.tolist():  # the mined tuples of the last sub-epoch
        q_utm = utm[dm.train_dataset.query_image_index(q)]
        assert p == dm.train_dataset.positives[q][0]
        assert (np.linalg.norm(utm[negs] - q_utm, axis=1) > 25).all()
    assert dm.protocols["val"].name == "pitts30k_val" and cli.model.val_recall.radius == 25.0
    assert "val/R@1" in cli.trainer.callback_metrics and cli.trainer.current_epoch == 1


def test_msls_data_config_validates(repo_root):
    cli = cli_main(
        [
            "--config",
            str(repo_root / "lightning_configs/paper/teacher.yaml"),
            "--config",
            str(repo_root / "lightning_configs/data/msls.yaml"),
        ],
        run=False,
    )
    hp = cli.datamodule.hparams
    assert (hp.train_benchmark, hp.val_benchmark, hp.test_benchmark) == ("msls_train", "msls_heldout", "msls_val")
    trained = set(hp.benchmark_options["msls_train"]["cities"])
    assert len(trained) == 20 and not trained & {"zurich", "ottawa"}  # the held-out cities never train
    assert (hp.train_pos_radius, hp.train_neg_radius, hp.image_size) == (10.0, 25.0, [480, 640])


def test_msls_training_cities_never_mix(tmp_path):
    # Two cities written with the same UTM coordinates: without the per-city offset their
    # images would be each other's positives.
    for city in ("london", "boston", "cph", "sf"):
        _write_msls(tmp_path, city)
    m = load_benchmark("msls_train", tmp_path, cities=["london", "boston"])
    assert len(m.database) == 4 and len(m.queries) == 4  # d3 of each city is a panorama
    assert m.database[2].utm[0] - m.database[0].utm[0] == CITY_OFFSET_M
    assert [n.split(": ")[0] for n in m.notes] == ["london", "boston"]
    dm = VPRDataModule(
        str(tmp_path),
        train_benchmark="msls_train",
        val_benchmark="msls_val",
        with_labels=False,
        num_negatives=1,
        train_pos_radius=10.0,
        train_neg_radius=10.0,
        synthetic_preset=None,
        benchmark_options={"msls_train": {"cities": ["london", "boston"]}},
    )
    dm.setup("fit")
    ds = dm.train_dataset
    city = ["london" if "london" in str(r.path) else "boston" for r in ds.bank.records]
    for i in range(len(ds)):
        q_city = city[ds.query_image_index(i)]
        assert {city[j] for j in ds.positives[i]} == {q_city}


def test_rejection_sampled_negatives_lie_beyond_the_radius(tiny_world, monkeypatch):
    dm = VPRDataModule(str(tiny_world), with_labels=False, synthetic_preset=None, num_negatives=3)
    dm.setup("fit")
    bank = dm.train_dataset.bank
    monkeypatch.setattr(TripletDataset, "EXACT_SAMPLING_MAX", 0)  # the path large databases take
    tables = [TripletDataset(bank, 3, 10.0, 25.0, seed=s).tuples for s in (5, 5, 6)]
    assert torch.equal(tables[0], tables[1]) and not torch.equal(tables[0], tables[2])
    ds = TripletDataset(bank, 3, 10.0, 25.0, seed=5)
    for q, _, *neg in ds.tuples.tolist():
        assert len(set(neg)) == 3 and not np.isin(neg, ds.non_negatives[q]).any()
        assert max(neg) < bank.num_database


@pytest.mark.parametrize("name", ["pitts30k_train", "pitts30k_val"])
def test_native_pittsburgh_splits_read_their_own_mat(tmp_path, name):
    write_pittsburgh(tmp_path, splits=(name.split("_")[1],))
    m = load_benchmark(name, tmp_path)
    assert m.name == name and len(m.database) == 10 and m.notes == [f"{name}.mat: positives within 25 m"]
