import numpy as np
import pytest

from structvpr.cli import cli_main
from structvpr.data.benchmarks import BENCHMARKS, load_benchmark
from tests.data.test_formats import _img, _write_msls, _write_pitts


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


WRITERS = {"pitts30k_test": _write_pitts, "msls_val": lambda r: (_write_msls(r, "cph"), _write_msls(r, "sf")),
           "nordland": _nordland}


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
    manifest = load_benchmark(name, root)
    cli = cli_main(["test", "--config", str(repo_root / "lightning_configs/synthetic/baseline.yaml"),
                    f"--data.init_args.root={root}", f"--data.init_args.test_benchmark={name}",
                    "--data.init_args.with_labels=false", "--data.init_args.cache_images=false",
                    "--data.init_args.image_size=[32, 64]", "--data.init_args.num_workers=0",
                    "--trainer.logger=false", "--trainer.enable_progress_bar=false",
                    f"--trainer.default_root_dir={tmp_path}"])
    result = cli.model.test_results
    assert result["num_queries"] + result["num_excluded"] == len(manifest.queries)
    assert cli.model.test_recall.radius == manifest.radius
    out = capsys.readouterr().out
    assert "| model | R@1 | R@5 | R@10 | R@20 | queries | excluded |" in out


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_each_variant_has_a_config_that_validates(name, repo_root):
    cli = cli_main(["--config", str(repo_root / f"lightning_configs/benchmarks/{name}.yaml")], run=False)
    assert cli.datamodule.hparams.test_benchmark == name
    assert type(cli.model).__name__ == "StructVPRStudent"
