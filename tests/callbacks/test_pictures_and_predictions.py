import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from structvpr.callbacks import PredictionWriter, RetrievalPictures
from structvpr.callbacks.pictures import recall_curve, retrieval_grid
from structvpr.data import VPRDataModule
from structvpr.tasks import StructVPRStudent


def _trainer(tmp_path, callbacks):
    return pl.Trainer(
        accelerator="cpu",
        logger=pl.loggers.CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=tmp_path,
    )


def test_grid_colours_follow_correctness(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((10, 20, 3), 128, dtype=np.uint8)).save(p)
        paths.append(p)
    grid = np.array(retrieval_grid([paths[0]], [[paths[1], paths[2]]], np.array([[True, False]]), border=3))
    tile_w = 20 + 6 + 6  # image + border + spacing
    assert tuple(grid[0, 0]) == (255, 255, 255)  # query framed white
    assert tuple(grid[0, tile_w]) == (40, 200, 60)  # first result correct: green
    assert tuple(grid[0, 2 * tile_w]) == (220, 40, 40)  # second wrong: red


def test_recall_curve_writes_png(tmp_path):
    recall_curve(torch.tensor([1, 2, 30]), 10, tmp_path / "curve.png")
    assert Image.open(tmp_path / "curve.png").size[0] > 100
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_test_run_writes_pictures(tiny_world, tmp_path):
    pics = RetrievalPictures(num_queries=4, top_k=3, failures_only=True)
    dm = VPRDataModule(root=str(tiny_world), image_size=(32, 64), synthetic_preset=None, with_labels=False)
    _trainer(tmp_path, [pics]).test(StructVPRStudent(), datamodule=dm)
    names = sorted(p.name for p in pics.saved)
    assert names == ["recall_curve_test.png", "retrieval_test.png"]
    grid = Image.open(pics.saved[0])
    assert grid.height > 0


def test_predict_on_plain_folders_writes_msls_format(tiny_world, tmp_path):
    db_dir, q_dir = tmp_path / "db", tmp_path / "q"
    db_dir.mkdir()
    q_dir.mkdir()
    src = sorted((tiny_world / "images/test/database").iterdir())[:6]
    for i, p in enumerate(src):
        Image.open(p).save(db_dir / f"db_{i:03d}.jpg")
        if i < 2:
            Image.open(p).save(q_dir / f"query_{i}.jpg")
    writer = PredictionWriter(output_dir=str(tmp_path / "out"), top_k=3)
    dm = VPRDataModule(
        root=str(tmp_path / "unused"),
        image_size=(32, 64),
        predict_database=str(db_dir),
        predict_queries=str(q_dir),
        synthetic_preset=None,
    )
    model = StructVPRStudent()
    _trainer(tmp_path, [writer]).predict(model, datamodule=dm)
    rows = (tmp_path / "out/predictions.txt").read_text().splitlines()
    assert len(rows) == 2
    first = rows[0].split()
    assert first[0] == "query_0" and len(first) == 4 and all(k.startswith("db_") for k in first[1:])
    # a query identical to a database image (same pixels up to JPEG) retrieves it first
    assert first[1] == "db_000"
    db = np.load(tmp_path / "out/database_descriptors.npy")
    assert db.shape == (6, model.encoder.descriptor_dim)
    np.testing.assert_allclose(np.linalg.norm(db, axis=1), 1.0, rtol=1e-5)


def test_predict_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="give both predict_database and predict_queries"):
        VPRDataModule(root=str(tmp_path), predict_database=str(tmp_path))
    (tmp_path / "empty").mkdir()
    dm = VPRDataModule(
        root=str(tmp_path),
        predict_database=str(tmp_path / "empty"),
        predict_queries=str(tmp_path / "missing"),
        synthetic_preset=None,
    )
    with pytest.raises(ValueError, match="empty: holds no .jpg"):
        dm.setup("predict")


def test_predict_through_a_benchmark_config_writes_predictions(tiny_world, tmp_path, repo_root):
    from structvpr.cli import cli_main

    folders = {}
    for role, n in (("db", 5), ("q", 2)):
        folders[role] = tmp_path / role
        folders[role].mkdir()
        for i, p in enumerate(sorted((tiny_world / "images/test/database").iterdir())[:n]):
            Image.open(p).save(folders[role] / f"{role}_{i}.jpg")
    cli_main(
        [
            "predict",
            "--config",
            str(repo_root / "lightning_configs/benchmarks/msls_val.yaml"),
            f"--data.init_args.predict_database={folders['db']}",
            f"--data.init_args.predict_queries={folders['q']}",
            "--data.init_args.image_size=[32, 64]",
            "--data.init_args.num_workers=0",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path / 'out'}",
        ]
    )
    rows = [r.split() for r in (tmp_path / "out/version_0/predictions.txt").read_text().splitlines()]
    assert [r[0] for r in rows] == ["q_0", "q_1"] and all(len(r) == 6 for r in rows)  # top 25 of a 5-image database


def _official_msls_recall(root, predictions, cities=("cph", "sf"), ks=(1, 5, 10, 20)):
    """Recall@k of an MSLS predictions file as the official description counts it, from the CSVs alone:
    per city, query and database rows whose subtask_index `all` is true and that are no panorama;
    positives are database keys of the same city within 25 m; queries without one are dropped;
    prediction rows for other keys are ignored."""
    import csv

    def rows(city, role):
        folder = root / "train_val" / city / role
        read = lambda name: list(csv.DictReader(open(folder / name)))  # noqa: E731
        post, raw, sub = read("postprocessed.csv"), read("raw.csv"), read("subtask_index.csv")
        return {
            p["key"]: (float(p["easting"]), float(p["northing"]))
            for p, r, s in zip(post, raw, sub)
            if s["all"] == "True" and r["pano"] != "True"
        }

    positives = {}
    for city in cities:
        db = rows(city, "database")
        for key, (e, n) in rows(city, "query").items():
            near = {k for k, (de, dn) in db.items() if (de - e) ** 2 + (dn - n) ** 2 <= 25.0**2}
            if near:
                positives[key] = near
    predicted = {line.split()[0]: line.split()[1:] for line in predictions.read_text().splitlines()}
    hits = {k: [any(p in positives[q] for p in predicted[q][:k]) for q in positives] for k in ks}
    return {f"R@{k}": sum(h) / len(h) for k, h in hits.items()}, len(positives)


def test_predict_on_a_two_city_msls_split_matches_test_and_the_official_count(trained, tiny_world, tmp_path, repo_root):
    import shutil

    from structvpr.cli import cli_main
    from tests.data.test_formats import _write_msls_val_city

    rng = np.random.default_rng(0)
    root = tmp_path / "msls"
    for city in ("cph", "sf"):
        _write_msls_val_city(root, city, rng)
    sources = sorted((tiny_world / "images/test/database").iterdir())
    for i, image in enumerate(sorted(root.rglob("images/*.jpg"))):  # real pixels, so retrieval is not degenerate
        shutil.copy(sources[i % len(sources)], image.with_suffix(".png"))
        Image.open(image.with_suffix(".png")).convert("RGB").save(image)
        image.with_suffix(".png").unlink()
    student = StructVPRStudent.load_from_checkpoint(trained["baseline"]).export_student(tmp_path / "student.ckpt")
    common = [
        "--config",
        str(repo_root / "lightning_configs/benchmarks/msls_val.yaml"),
        f"--data.init_args.root={root}",
        "--data.init_args.image_size=[32, 64]",
        "--data.init_args.num_workers=0",
        "--ckpt_path",
        str(student),
        "--trainer.enable_progress_bar=false",
    ]
    cli_main(["predict", *common, f"--trainer.default_root_dir={tmp_path / 'pred'}"])
    official, count = _official_msls_recall(root, tmp_path / "pred/version_0/predictions.txt")
    test = cli_main(["test", *common, f"--trainer.default_root_dir={tmp_path / 'test'}"]).model.test_results
    assert int(test["num_queries"]) == count > 0
    for k, value in official.items():
        assert test[k] == pytest.approx(value, abs=1e-6), k
    # Plain folders of both cities: one search over their union, panoramas dropped with a warning.
    folders = {role: [str(root / "train_val" / c / role / "images") for c in ("cph", "sf")] for role in ("database", "query")}
    with pytest.warns(UserWarning, match=r"images are panoramas in .*raw.csv: dropped, as the official evaluation does"):
        cli_main(
            [
                "predict",
                *common,
                f"--trainer.default_root_dir={tmp_path / 'folders'}",
                f"--data.init_args.predict_database=[{','.join(folders['database'])}]",
                f"--data.init_args.predict_queries=[{','.join(folders['query'])}]",
            ]
        )
    lines = (tmp_path / "folders/version_0/predictions.txt").read_text().splitlines()
    panoramas = {
        r["key"]
        for c in ("cph", "sf")
        for role in ("database", "query")
        for r in __import__("csv").DictReader(open(root / "train_val" / c / role / "raw.csv"))
        if r["pano"] == "True"
    }
    keys = {k for line in lines for k in line.split()}
    assert keys and not keys & panoramas
    assert {line.split()[0].split("_")[0] for line in lines} == {"cph", "sf"}  # both cities' queries, one file


def test_bad_images_are_listed_before_test_and_predict_can_skip_them(tiny_world, tmp_path):
    import shutil

    from structvpr.data.datasets import ImageReadError

    root = tmp_path / "world"
    shutil.copytree(tiny_world, root)
    queries = sorted((root / "images/test/queries").iterdir())
    for broken in queries[:1]:
        broken.write_bytes(b"not an image")
    for broken in queries[1:3]:  # truncated: the header is intact, only a full decode finds them
        data = broken.read_bytes()
        broken.write_bytes(data[: len(data) // 2])
    dm = VPRDataModule(root=str(root), image_size=(32, 64), synthetic_preset=None, with_labels=False)
    with pytest.raises(ImageReadError, match=r"test set: 3 unreadable image\(s\):\n  .*cannot decode") as err:
        dm.setup("test")
    assert all(q.name in str(err.value) for q in queries[:3])  # every bad file, in one short message
    assert "truncated" in str(err.value)
    folders = {"predict_database": str(root / "images/test/database"), "predict_queries": str(root / "images/test/queries")}
    with pytest.raises(ImageReadError, match="predict_skip_bad_images=true"):
        VPRDataModule(root=str(root), synthetic_preset=None, **folders).setup("predict")
    dm = VPRDataModule(root=str(root), synthetic_preset=None, predict_skip_bad_images=True, **folders)
    with pytest.warns(UserWarning, match="predict leaves out 3 unreadable image"):
        dm.setup("predict")
    assert dm.predict_dataset.num_queries == len(queries) - 3
