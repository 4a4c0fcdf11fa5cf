import json

import numpy as np
import pytest

from structvpr.cli import cli_main
from structvpr.data.benchmarks import BENCHMARKS, load_benchmark
from structvpr.data.vg import DatasetLayoutError
from tests.data.test_formats import _img, _write_msls, _write_pitts


def vg_name(east, north, pano="", tile=0):
    """A VG file name with UTM east/north, panorama id and tile number."""
    return "@" + "@".join([f"{east:.2f}", f"{north:.2f}", "54", "S", "", "", pano, f"{tile:02d}"] + [""] * 6) + "@.jpg"


def _vg(root, split, database, queries):
    for role, items in (("database", database), ("queries", queries)):
        for item in items:
            _img(root / "images" / split / role / vg_name(*item))


def _tokyo(root):
    # Two panoramas of three cutouts 100 m apart, two queries at the first one; one query far away.
    _vg(
        root,
        "test",
        [(0, 0, "panoA", t) for t in range(3)] + [(100, 0, "panoB", t) for t in range(3)],
        [(1, 0, "q1"), (2, 0, "q2"), (5000, 0, "q3")],
    )


def _nordland_vprbench(root):
    for i in range(5):
        _img(root / f"ref/{i:07d}.jpg")
    for i in range(2):
        _img(root / f"query/{i:07d}.jpg")
    np.save(root / "Nordland_dbImages.npy", np.array([f"ref/{i:07d}.jpg" for i in range(5)]))
    np.save(root / "Nordland_qImages.npy", np.array([f"query/{i:07d}.jpg" for i in range(2)]))
    gt = np.empty(2, dtype=object)
    gt[0], gt[1] = np.array([0, 1]), np.array([3])
    np.save(root / "Nordland_gt.npy", gt, allow_pickle=True)


def _nordland(root):
    for i in range(4):
        _img(root / f"summer/{i:07d}.jpg")
        _img(root / f"winter/{i:07d}.jpg")
    (root / "dataset_imagenames").mkdir(parents=True)
    (root / "dataset_gt_files").mkdir()
    (root / "dataset_imagenames/nordland_imageNames_index.txt").write_text("".join(f"summer/{i:07d}.jpg\n" for i in range(4)))
    (root / "dataset_imagenames/nordland_imageNames_query.txt").write_text("".join(f"winter/{i:07d}.jpg\n" for i in range(4)))
    frames = np.arange(4)[:, None].repeat(2, 1) * 20  # 20 frames apart: only the same frame is within 10
    np.savez(root / "dataset_gt_files/nordland.npz", utmDb=frames, utmQ=frames, posDistThr=10)


WRITERS = {
    "pitts30k_test": _write_pitts,
    "pitts250k_test": lambda r: _write_pitts(r, mat_name="pitts250k_test.mat"),
    "msls_val": lambda r: (_write_msls(r, "cph"), _write_msls(r, "sf")),
    "msls_val_vg": lambda r: _vg(r, "val", [(0, 0), (50, 0), (100, 0)], [(3, 0), (97, 0), (400, 0)]),
    "tokyo247": _tokyo,
    "nordland": _nordland,
    # dummy UTM north = frame x 2.38 m: frames 0, 5, 20; 25 m is about 10 frames
    "nordland_vg": lambda r: _vg(r, "test", [(0, 0), (0, 11.9), (0, 47.6)], [(0, 2.38), (0, 45.2)]),
    "nordland_vprbench": _nordland_vprbench,
}
#: Options a variant needs to be read (the VPR-Bench ground truth is pickled: explicit trust).
OPTIONS = {"nordland_vprbench": {"allow_pickle": True}}


def test_every_variant_has_a_fixture_test():
    assert sorted(WRITERS) == sorted(BENCHMARKS)


def test_every_variant_documents_threshold_and_source():
    for name, reader in BENCHMARKS.items():
        doc = reader.__doc__ or ""
        assert ("m" in doc or "frames" in doc) and len(doc) > 60, name
    with pytest.raises(ValueError, match="benchmark must be one of"):
        load_benchmark("sped", ".")


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_structvpr_test_runs_on_a_fixture_of_the_variant(name, tmp_path, repo_root, capsys):
    root = tmp_path / name
    root.mkdir()
    WRITERS[name](root)
    manifest = load_benchmark(name, root, **OPTIONS.get(name, {}))
    options = f"--data.init_args.benchmark_options={json.dumps({name: OPTIONS[name]})}" if name in OPTIONS else None
    cli = cli_main(
        [
            "test",
            "--config",
            str(repo_root / "lightning_configs/synthetic/baseline.yaml"),
            f"--data.init_args.root={root}",
            f"--data.init_args.test_benchmark={name}",
            *([options] if options else []),
            "--data.init_args.with_labels=false",
            "--data.init_args.cache_images=false",
            "--data.init_args.image_size=[32, 64]",
            "--data.init_args.num_workers=0",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    result = cli.model.test_results
    assert result["num_queries"] + result["num_excluded"] == len(manifest.queries)
    assert cli.model.test_recall.radius == manifest.radius
    out = capsys.readouterr().out
    assert "| model | R@1 | R@5 | R@10 | R@20 | queries | excluded |" in out
    assert f"| StructVPRStudent on {name} |" in out
    report = json.loads((tmp_path / "version_0/test_results.json").read_text())  # the run's own folder
    assert report["notes"] == manifest.notes and report["num_queries"] == result["num_queries"]
    assert f"- {manifest.notes[0]}" in out  # how positives were decided, under the table


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_each_variant_has_a_config_that_validates(name, repo_root):
    cli = cli_main(["--config", str(repo_root / f"lightning_configs/benchmarks/{name}.yaml")], run=False)
    assert cli.datamodule.hparams.test_benchmark == name
    assert type(cli.model).__name__ == "StructVPRStudent"


def test_tokyo_one_hit_per_panorama_is_an_option(tmp_path, repo_root, capsys):
    _tokyo(tmp_path)
    plain = load_benchmark("tokyo247", tmp_path)
    assert plain.database_groups is None and len(plain.database) == 6 and plain.radius == 25.0
    grouped = load_benchmark("tokyo247", tmp_path, one_hit_per_panorama=True)
    assert grouped.database_groups == ["panoA"] * 3 + ["panoB"] * 3
    assert "one hit per panorama: 2 panoramas" in grouped.notes
    with pytest.raises(ValueError, match=r"tokyo247 takes the options \['one_hit_per_panorama'\], got \['per_pano'\]"):
        load_benchmark("tokyo247", tmp_path, per_pano=True)
    cli = cli_main(
        [
            "test",
            "--config",
            str(repo_root / "lightning_configs/benchmarks/tokyo247.yaml"),
            f"--data.init_args.root={tmp_path}",
            "--data.init_args.image_size=[32, 64]",
            "--data.init_args.num_workers=0",
            '--data.init_args.benchmark_options={"tokyo247": {"one_hit_per_panorama": true}}',
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert cli.model.test_recall.database_groups == grouped.database_groups
    assert cli.model.test_results["num_queries"] == 2 and cli.model.test_results["num_excluded"] == 1
    assert "| StructVPRStudent on tokyo247 (one hit per panorama) |" in capsys.readouterr().out


def test_tokyo_one_hit_per_panorama_needs_panorama_ids(tmp_path):
    _vg(tmp_path, "test", [(0, 0, "panoA"), (9, 0, "")], [(1, 0)])
    with pytest.raises(DatasetLayoutError, match=r"@9\.00@0\.00@54@S@@@@00@.*no panorama id in the file name"):
        load_benchmark("tokyo247", tmp_path, one_hit_per_panorama=True)


def test_vprbench_nordland_reads_flipped_roles_and_needs_trust(tmp_path):
    _nordland_vprbench(tmp_path)
    with pytest.raises(DatasetLayoutError, match="Nordland_gt.npy: ground truth is an object array; pass allow_pickle"):
        load_benchmark("nordland_vprbench", tmp_path)
    m = load_benchmark("nordland_vprbench", tmp_path, allow_pickle=True)
    assert [r.path.parent.name for r in m.database] == ["ref"] * 5 and len(m.queries) == 2
    assert [p.tolist() for p in m.positives] == [[0, 1], [3]]
    (tmp_path / "Nordland_qImages.npy").unlink()
    with pytest.raises(DatasetLayoutError, match="Nordland_qImages.npy: ground-truth file is missing"):
        load_benchmark("nordland_vprbench", tmp_path, allow_pickle=True)


def test_benchmark_options_for_an_unused_split_are_refused():
    from structvpr.data import VPRDataModule

    with pytest.raises(ValueError, match=r"benchmark_options names \['tokyo247'\], which no stage uses"):
        VPRDataModule(test_benchmark="nordland", benchmark_options={"tokyo247": {"one_hit_per_panorama": True}})
    with pytest.raises(ValueError, match="train_benchmark must be one of"):
        VPRDataModule(train_benchmark="pitts30k_test")


def test_validating_on_the_test_split_warns_and_no_shipped_config_does(tmp_path, repo_root):
    import yaml

    from structvpr.data import VPRDataModule

    with pytest.warns(UserWarning, match="validation and test both read the named split msls_val"):
        VPRDataModule(root=str(tmp_path), val_benchmark="msls_val", test_benchmark="msls_val", synthetic_preset=None)
    with pytest.warns(UserWarning, match="the split folder 'val'"):
        VPRDataModule(root=str(tmp_path), test_split="val", synthetic_preset=None)
    with pytest.warns(UserWarning, match="data.init_args.eval_radius is not read: set model.init_args.eval_radius"):
        VPRDataModule(root=str(tmp_path), eval_radius=10.0, synthetic_preset=None)
    for path in sorted((repo_root / "lightning_configs").rglob("*.yaml")):
        data = (yaml.safe_load(path.read_text()).get("data") or {}).get("init_args", {})
        val, test = data.get("val_benchmark"), data.get("test_benchmark")
        assert val is None or val != test, f"{path} selects on the split it reports"


def test_msls_heldout_reads_training_cities_apart_at_25_m(tmp_path):
    from structvpr.data.benchmarks import load_benchmark
    from tests.data.test_formats import _write_msls

    _write_msls(tmp_path, "zurich")
    _write_msls(tmp_path, "ottawa")
    m = load_benchmark("msls_heldout", tmp_path)
    assert m.name == "msls_heldout" and m.radius == 25.0
    assert len(m.database) == 4 and len(m.queries) == 4  # d3 of each city is a panorama
    assert {round(r.utm[0] // 1e7) for r in m.database} == {0, 1}  # the two cities never share coordinates
