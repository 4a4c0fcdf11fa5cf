"""Runs you can resume and trust: stable checkpoint folders, last.ckpt every epoch, refused mismatches, versioned outputs."""

import pytest
import torch

from structvpr.cli import CheckpointMismatchError, cli_main
from structvpr.tasks import StructVPRStudent

TINY = [
    "--data.init_args.image_size=[32, 64]",
    "--data.init_args.num_workers=0",
    "--data.init_args.batch_size=4",
    "--trainer.limit_train_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.logger=false",
]


def _fit(repo_root, tiny_world, out, *extra):
    return cli_main(
        [
            "fit",
            "--config",
            str(repo_root / "lightning_configs/synthetic/baseline.yaml"),
            f"--data.init_args.root={tiny_world}",
            f"--trainer.default_root_dir={out}",
            *TINY,
            *extra,
        ]
    )


def test_last_checkpoint_is_the_last_epoch_and_resumes_with_best_tracking(repo_root, tiny_world, tmp_path):
    first = _fit(repo_root, tiny_world, tmp_path, "--trainer.max_epochs=3")
    folder = tmp_path / "checkpoints"  # the same for every run of this config: no run id in the path
    best_cb = first.trainer.checkpoint_callback
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert last["global_step"] == first.trainer.global_step == 6  # after the last epoch, improved or not
    assert best_cb.best_model_path.startswith(str(folder / "best-epoch"))
    resumed = _fit(repo_root, tiny_world, tmp_path, "--trainer.max_epochs=4", "--ckpt_path=last")
    assert resumed.trainer.current_epoch == 4 and resumed.trainer.global_step == first.trainer.global_step + 2
    # best-score tracking came back with the checkpoint: the best is the better of the old best and epoch 3
    assert float(resumed.trainer.checkpoint_callback.best_model_score) >= float(best_cb.best_model_score)


def test_a_checkpoint_follows_every_sub_epoch_when_validation_runs_less_often(repo_root, tiny_world, tmp_path):
    """check_val_every_n_epoch=3: Lightning's plain ModelCheckpoint would save nothing in 2 sub-epochs."""
    first = _fit(repo_root, tiny_world, tmp_path, "--trainer.max_epochs=2", "--trainer.check_val_every_n_epoch=3")
    folder = tmp_path / "checkpoints"
    assert first.trainer.callback_metrics.get("val/R@1") is None  # no validation ran
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 4 and (folder / "latest-epoch01.ckpt").is_file()
    resumed = _fit(
        repo_root, tiny_world, tmp_path, "--trainer.max_epochs=3", "--trainer.check_val_every_n_epoch=3", "--ckpt_path=last"
    )
    assert resumed.trainer.global_step == 6 and "val/R@1" in resumed.trainer.callback_metrics  # epoch 2 validates
    after = torch.load(folder / "last.ckpt", weights_only=True)
    assert after["epoch"] == 2 and after["global_step"] == 6  # saved after that validation, with its best score
    best = next(v for k, v in after["callbacks"].items() if "val/R@1" in k)
    assert best["best_model_score"] is not None


def test_ckpt_path_last_without_a_checkpoint_fails(repo_root, tiny_world, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--ckpt_path last: no last\*.ckpt in .*checkpoints"):
        _fit(repo_root, tiny_world, tmp_path, "--trainer.max_epochs=1", "--ckpt_path=last")


def test_ckpt_path_last_with_a_dangling_link_fails_and_writes_no_second_link(repo_root, tiny_world, tmp_path):
    _fit(repo_root, tiny_world, tmp_path, "--trainer.max_epochs=1")
    folder = tmp_path / "checkpoints"
    link = folder / "last.ckpt"
    assert link.is_symlink()
    (folder / link.readlink()).unlink()  # the run folder cleaned by hand: the link points at nothing
    with pytest.raises(FileNotFoundError, match=r"last.ckpt points at latest-epoch00.ckpt, which does not exist"):
        _fit(repo_root, tiny_world, tmp_path, "--trainer.max_epochs=2", "--ckpt_path=last")
    assert sorted(p.name for p in folder.glob("last*")) == ["last.ckpt"]


def test_a_checkpoint_of_another_class_or_architecture_is_refused(repo_root, tiny_world, tmp_path):
    teacher = cli_main(
        [
            "fit",
            "--config",
            str(repo_root / "lightning_configs/synthetic/teacher.yaml"),
            f"--data.init_args.root={tiny_world}",
            f"--trainer.default_root_dir={tmp_path / 't'}",
            "--trainer.max_epochs=1",
            *TINY,
        ]
    )
    teacher_ckpt = teacher.trainer.checkpoint_callback.best_model_path
    baseline = [
        "test",
        "--config",
        str(repo_root / "lightning_configs/synthetic/baseline.yaml"),
        f"--data.init_args.root={tiny_world}",
        f"--trainer.default_root_dir={tmp_path / 'b'}",
        *TINY,
    ]
    with pytest.raises(CheckpointMismatchError, match=r"holds a SegTeacher but the config builds a StructVPRStudent"):
        cli_main([*baseline, "--ckpt_path", teacher_ckpt])
    netvlad = StructVPRStudent(aggregator="netvlad", num_clusters=4).export_student(tmp_path / "netvlad.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"aggregator='netvlad' in the checkpoint, 'gem' in the config"):
        cli_main([*baseline, "--ckpt_path", str(netvlad)])


def test_two_runs_of_one_config_keep_both_results(repo_root, tiny_world, tmp_path):
    student = StructVPRStudent().export_student(tmp_path / "student.ckpt")
    args = [
        "test",
        "--config",
        str(repo_root / "lightning_configs/synthetic/baseline.yaml"),
        f"--data.init_args.root={tiny_world}",
        f"--trainer.default_root_dir={tmp_path}",
        *TINY,
        "--ckpt_path",
        str(student),
    ]
    cli_main(args)
    cli_main([*args, "--seed_everything=1"])
    for n in (0, 1):
        run = tmp_path / f"version_{n}"
        assert (run / "test_results.json").is_file() and (run / "config.yaml").is_file()
    assert "seed_everything: 1" in (tmp_path / "version_1/config.yaml").read_text()
    assert "seed_everything: 0" in (tmp_path / "version_0/config.yaml").read_text()


def _final(folder):
    ckpt = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    best = next(v["best_model_score"] for k, v in ckpt["callbacks"].items() if "val/R@1" in k)
    return ckpt["state_dict"], float(best), ckpt["global_step"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["teacher", "distill"])
def test_kill_9_mid_epoch_then_resume_equals_the_uninterrupted_run(stage, trained, tiny_world, tmp_path, repo_root):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(repo_root), "WANDB_MODE": "offline"}
    base = [
        sys.executable,
        "-m",
        "structvpr",
        "fit",
        "--config",
        str(repo_root / f"lightning_configs/synthetic/{stage}.yaml"),
        f"--data.init_args.root={tiny_world}",
        "--data.init_args.image_size=[32, 64]",
        "--data.init_args.num_workers=0",
        "--data.init_args.batch_size=4",
        "--trainer.max_epochs=3",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
    ]
    if stage == "distill":
        base += [f"--model.init_args.teacher_ckpt={trained['teacher']}", f"--model.init_args.student_ckpt={trained['baseline']}"]

    def run(folder, *extra):
        return subprocess.run(
            [*base, f"--trainer.default_root_dir={folder}", *extra],
            capture_output=True,
            text=True,
            env=env,
            cwd=repo_root,
            timeout=600,
        )

    whole = run(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = run(
        tmp_path / "killed",
        "--trainer.callbacks+=tests.tasks.helpers.KillAt",
        "--trainer.callbacks.epoch=1",
        "--trainer.callbacks.batch=2",
    )
    assert killed.returncode == -9  # killed mid-epoch 1: last.ckpt holds the end of epoch 0
    resumed = run(tmp_path / "killed", "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (w_whole, best_whole, s_whole), (w_res, best_res, s_res) = _final(tmp_path / "whole"), _final(tmp_path / "killed")
    assert s_whole == s_res and best_res == best_whole  # same steps; best-score tracking carried over
    for key, value in w_whole.items():
        torch.testing.assert_close(w_res[key], value, rtol=0, atol=1e-6, msg=key)
    # the final weights of both runs validate to the same val/R@1
    recalls = []
    for folder in ("whole", "killed"):
        args = base[4:]  # the config and data arguments, after "fit"
        cli = cli_main(
            [
                "validate",
                *args,
                f"--trainer.default_root_dir={tmp_path / folder / 'val'}",
                f"--ckpt_path={tmp_path / folder / 'checkpoints' / 'last.ckpt'}",
            ]
        )
        recalls.append(float(cli.trainer.callback_metrics["val/R@1"]))
    assert recalls[0] == recalls[1]
