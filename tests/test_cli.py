import subprocess
import sys
from pathlib import Path

import pytest
import wandb

from structvpr.cli import cli_main, main

TINY = [
    "--data.init_args.image_size=[32, 64]",
    "--data.init_args.num_workers=0",
    "--data.init_args.batch_size=4",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.enable_progress_bar=false",
]


def test_python_m_structvpr_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "structvpr", "--help"], capture_output=True, text=True, check=True)
    for word in ("fit", "validate", "test", "predict", "synth", "segment", "splits", "demo"):
        assert word in out.stdout


def test_splits_command_lists_every_named_split_with_its_options(capsys):
    from structvpr.data.benchmarks import SPLITS

    main(["splits"])
    out = capsys.readouterr().out
    for name in SPLITS:
        assert f"\n  {name}" in out, name
    assert "tokyo247  [options: one_hit_per_panorama=False]" in out
    assert "msls_train  [options: cities=None]" in out and "training splits (data.init_args.train_benchmark):" in out


def test_synth_command_writes_a_world(tmp_path, capsys):
    main(["synth", "--root", str(tmp_path / "w"), "--preset", "tiny", "--seed", "1", "--label-noise", "0.2"])
    assert (tmp_path / "w" / "manifest.json").is_file()
    out = capsys.readouterr().out
    assert "preset tiny, seed 1, label noise 0.2" in out


def _fit_tiny(config, tiny_world, out):
    """The best checkpoint of a CLI fit of a synthetic config on the tiny world at 32x64 (TINY)."""
    cli = cli_main(
        [
            "fit",
            "--config",
            str(config),
            f"--data.init_args.root={tiny_world}",
            f"--trainer.default_root_dir={out}",
            "--trainer.logger=false",
            *TINY,
        ]
    )
    path = cli.trainer.checkpoint_callback.best_model_path
    assert Path(path).is_file()
    return path


@pytest.fixture(scope="module")
def teacher_ckpt(tiny_world, tmp_path_factory, repo_root):
    return _fit_tiny(repo_root / "lightning_configs/synthetic/teacher.yaml", tiny_world, tmp_path_factory.mktemp("cli-teacher"))


def test_teacher_config_trains(teacher_ckpt):
    assert teacher_ckpt.endswith(".ckpt")


def test_baseline_config_trains_with_offline_wandb_and_tests(tiny_world, tmp_path, repo_root, capsys):
    cfg = str(repo_root / "lightning_configs/synthetic/baseline.yaml")
    common = [
        f"--data.init_args.root={tiny_world}",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        *TINY,
    ]
    cli = cli_main(["fit", "--config", cfg, *common])
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    assert (tmp_path / "wandb").is_dir()  # offline run files, no network
    wandb.finish()
    test = cli_main(["test", "--config", cfg, "--ckpt_path", ckpt, *common])
    assert set(test.model.test_results) == {"R@1", "R@5", "R@10", "R@20", "num_queries", "num_excluded"}
    reports = list(tmp_path.rglob("test_results.md"))
    assert reports and "| StructVPRStudent |" in reports[0].read_text()


def test_distill_config_trains_and_exports(tiny_world, tmp_path, repo_root, teacher_ckpt):
    cli = cli_main(
        [
            "fit",
            "--config",
            str(repo_root / "lightning_configs/synthetic/distill.yaml"),
            f"--data.init_args.root={tiny_world}",
            f"--trainer.default_root_dir={tmp_path}",
            f"--model.init_args.teacher_ckpt={teacher_ckpt}",
            "--trainer.logger=false",
            *TINY,
        ]
    )
    exporter = next(c for c in cli.trainer.callbacks if type(c).__name__ == "ExportStudent")
    assert exporter.path.is_file()
    weighting = next(c for c in cli.trainer.callbacks if type(c).__name__ == "SampleWeighting")
    counts = sum(weighting.last_stats[f"weighting/{g}_count"] for g in ("noisy", "teachable", "consistent"))
    assert counts == len(cli.datamodule.train_dataset)


@pytest.mark.parametrize("stage", ["teacher", "baseline", "distill"])
def test_paper_configs_parse(stage, repo_root, tmp_path):
    cfg = repo_root / f"lightning_configs/paper/{stage}.yaml"
    out = subprocess.run(
        [sys.executable, "-m", "structvpr", "fit", "--config", str(cfg), "--print_config"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "vgg16" in out.stdout and "netvlad" in out.stdout
    assert "pca_dim: 4096" in out.stdout and "FitPCAWhitening" in out.stdout


def test_bad_config_keys_get_a_short_message_naming_the_config(tmp_path, repo_root):
    bad = tmp_path / "bad.yaml"
    config = (repo_root / "lightning_configs/synthetic/teacher.yaml").read_text()
    bad.write_text(config.replace("    lr: 0.001", "    lrr: 0.001"))
    out = subprocess.run(
        [sys.executable, "-m", "structvpr", "fit", "--config", str(bad), "--print_config"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert f"structvpr fit: bad configuration in {bad}" in out.stderr and "Option 'lrr' is not accepted" in out.stderr
    assert "usage:" not in out.stderr and len(out.stderr.splitlines()) < 12


def _msls_tree(root):
    """Two MSLS val cities in the official layout, with random pixels so descriptors differ."""
    import numpy as np
    from PIL import Image

    from tests.data.test_formats import _write_msls_val_city

    rng = np.random.default_rng(0)
    for city in ("cph", "sf"):
        _write_msls_val_city(root, city, rng)
    for path in sorted(root.rglob("*.jpg")):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def student_ckpt(tiny_world, tmp_path_factory, repo_root):
    """A baseline trained through the CLI at 32x64 (TINY)."""
    return _fit_tiny(repo_root / "lightning_configs/synthetic/baseline.yaml", tiny_world, tmp_path_factory.mktemp("cli-student"))


def test_test_feeds_the_checkpoint_its_training_size_unless_the_command_line_sets_another(
    student_ckpt, tmp_path, repo_root, capsys, monkeypatch
):
    """A student trained at 32x64, tested through msls_val.yaml (480x640): tested at 32x64, with the
    same recall as when that size is given by hand; a size forced on the command line warns naming both.
    The config has no logger: its reports go under runs/benchmarks/msls_val, not the current folder."""
    _msls_tree(tmp_path / "msls")
    monkeypatch.chdir(tmp_path)
    common = [
        "--config",
        str(repo_root / "lightning_configs/benchmarks/msls_val.yaml"),
        "--ckpt_path",
        student_ckpt,
        f"--data.init_args.root={tmp_path / 'msls'}",
        "--data.init_args.num_workers=0",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
    ]
    auto = cli_main(["test", *common])
    assert auto.datamodule.image_size == (32, 64)
    assert (tmp_path / "runs/benchmarks/msls_val/version_0/test_results.md").is_file()
    assert not list(tmp_path.glob("version_*"))
    assert "was trained on 32x64 images: using that size instead of the configured 480x640" in capsys.readouterr().err
    assert auto.model.test_results["num_queries"] > 0
    by_hand = cli_main(["test", *common, "--data.init_args.image_size=[32, 64]"])
    assert by_hand.model.test_results == auto.model.test_results
    with pytest.warns(UserWarning, match="trained on 32x64 images, but --data.init_args.image_size asks for 40x80"):
        forced = cli_main(["test", *common, "--data.init_args.image_size=[40, 80]"])
    assert forced.datamodule.image_size == (40, 80)


def test_a_checkpoint_with_another_normalisation_is_refused(student_ckpt, tmp_path):
    import torch

    from structvpr.cli import CheckpointMismatchError, checkpoint_input_size

    ckpt = torch.load(student_ckpt, weights_only=True)
    assert checkpoint_input_size(student_ckpt) == [32, 64]
    ckpt["structvpr_input"]["mean"] = [0.5, 0.5, 0.5]
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"other.ckpt was trained with normalisation mean \[0.5, 0.5"):
        checkpoint_input_size(tmp_path / "other.ckpt")


def test_user_errors_print_one_short_message_and_debug_shows_the_traceback(
    student_ckpt, tmp_path, repo_root, capsys, monkeypatch
):
    from structvpr.errors import DatasetLayoutError, MissingCheckpointError

    monkeypatch.delenv("STRUCTVPR_DEBUG", raising=False)
    (tmp_path / "empty").mkdir()
    args = [
        "test",
        "--config",
        str(repo_root / "lightning_configs/benchmarks/msls_val.yaml"),
        "--ckpt_path",
        student_ckpt,
        f"--data.init_args.root={tmp_path / 'empty'}",
        "--data.init_args.num_workers=0",
        "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={tmp_path / 'out'}",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2].startswith("structvpr test: error: ") and str(tmp_path / "empty") in err[-2]
    assert err[-1] == "(run again with --debug, or STRUCTVPR_DEBUG=1, for the traceback)"
    assert not any("Traceback" in line for line in err)
    with pytest.raises(DatasetLayoutError):
        main([*args, "--debug"])
    missing = [a if a != student_ckpt else str(tmp_path / "gone.ckpt") for a in args]
    with pytest.raises(MissingCheckpointError, match=r"gone.ckpt: no such file"):
        main([*missing, "--debug"])


def test_a_worker_wrapped_message_is_cut_to_its_last_line():
    from structvpr.errors import ImageReadError, user_error_message

    wrapped = ImageReadError(
        "Caught ImageReadError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        'call last):\n  File "x.py", line 3, in f\n    raise ImageReadError(...)\n'
        "structvpr.errors.ImageReadError: /data/a.jpg: truncated image\n"
    )
    assert user_error_message(wrapped) == "/data/a.jpg: truncated image"
    assert user_error_message(ImageReadError("/data/b.jpg: empty file")) == "/data/b.jpg: empty file"


def test_an_rgb_model_tests_on_folders_without_label_maps(student_ckpt, teacher_ckpt, tiny_world, tmp_path, repo_root):
    import shutil

    from structvpr.errors import LabelMapError

    root = tmp_path / "rgb-only"
    shutil.copytree(tiny_world, root)
    shutil.rmtree(root / "labels")
    common = [
        f"--data.init_args.root={root}",
        "--data.init_args.synthetic_preset=null",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path / 'out'}",
        *TINY,
    ]
    cfg = str(repo_root / "lightning_configs/synthetic/baseline.yaml")
    test = cli_main(["test", "--config", cfg, "--ckpt_path", student_ckpt, *common])
    assert test.model.test_results["num_queries"] > 0
    with pytest.raises(LabelMapError):  # the teacher reads label maps: still required
        cli_main(
            [
                "test",
                "--config",
                str(repo_root / "lightning_configs/synthetic/teacher.yaml"),
                "--ckpt_path",
                teacher_ckpt,
                *common,
            ]
        )


def test_the_paper_student_trains_conv5_and_netvlad_with_the_references_sgd(repo_root, tmp_path):
    """lightning_configs/paper/baseline.yaml: VGG16 frozen below conv5, SGD(1e-4, 0.9, 1e-3) halved every 40 sub-epochs."""
    import torch

    cli = cli_main(
        [
            "--config",
            str(repo_root / "lightning_configs/paper/baseline.yaml"),
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
            "--data.init_args.num_workers=0",
        ],
        run=False,
    )
    model = cli.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    conv5 = 3 * (512 * 512 * 9 + 512)  # conv5_1 .. conv5_3 of VGG16
    netvlad = sum(p.numel() for p in model.encoder.aggregator.parameters())
    assert trainable == conv5 + netvlad
    assert sum(p.numel() for p in model.encoder.trunk.parameters()) == 14_714_688  # all of VGG16 up to conv5_3
    optimizers, schedulers = model.configure_optimizers()
    sgd = optimizers[0]
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["lr"] == 1e-4 and sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 1e-3
    step = schedulers[0]["scheduler"] if isinstance(schedulers[0], dict) else schedulers[0]
    assert isinstance(step, torch.optim.lr_scheduler.StepLR) and (step.step_size, step.gamma) == (40, 0.5)
