"""Runs you can resume and trust: stable checkpoint folders, last.ckpt every epoch, refused mismatches, versioned outputs."""

import pytest
import torch

from structvpr.cli import CheckpointMismatchError, cli_main
from structvpr.tasks import StructVPRStudent

TINY = ["--data.init_args.image_size=[32, 64]", "--data.init_args.num_workers=0", "--data.init_args.batch_size=4",
        "--trainer.limit_train_batches=2", "--trainer.enable_progress_bar=false",
        "--trainer.logger=false"]  # fmt: skip


def _fit(repo_root, tiny_world, out, *extra):
    return cli_main(["fit", "--config", str(repo_root / "lightning_configs/synthetic/baseline.yaml"),
                     f"--data.init_args.root={tiny_world}", f"--trainer.default_root_dir={out}", *TINY, *extra])


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


def test_ckpt_path_last_without_a_checkpoint_fails(repo_root, tiny_world, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--ckpt_path last: no last\*.ckpt in .*checkpoints"):
        _fit(repo_root, tiny_world, tmp_path, "--trainer.max_epochs=1", "--ckpt_path=last")


def test_a_checkpoint_of_another_class_or_architecture_is_refused(repo_root, tiny_world, tmp_path):
    teacher = cli_main(["fit", "--config", str(repo_root / "lightning_configs/synthetic/teacher.yaml"),
                        f"--data.init_args.root={tiny_world}", f"--trainer.default_root_dir={tmp_path / 't'}",
                        "--trainer.max_epochs=1", *TINY])  # fmt: skip
    teacher_ckpt = teacher.trainer.checkpoint_callback.best_model_path
    baseline = ["test", "--config", str(repo_root / "lightning_configs/synthetic/baseline.yaml"),
                f"--data.init_args.root={tiny_world}", f"--trainer.default_root_dir={tmp_path / 'b'}", *TINY]
    with pytest.raises(CheckpointMismatchError, match=r"holds a SegTeacher but the config builds a StructVPRStudent"):
        cli_main([*baseline, "--ckpt_path", teacher_ckpt])
    netvlad = StructVPRStudent(aggregator="netvlad", num_clusters=4).export_student(tmp_path / "netvlad.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"aggregator='netvlad' in the checkpoint, 'gem' in the config"):
        cli_main([*baseline, "--ckpt_path", str(netvlad)])


def test_two_runs_of_one_config_keep_both_results(repo_root, tiny_world, tmp_path):
    student = StructVPRStudent().export_student(tmp_path / "student.ckpt")
    args = ["test", "--config", str(repo_root / "lightning_configs/synthetic/baseline.yaml"),
            f"--data.init_args.root={tiny_world}", f"--trainer.default_root_dir={tmp_path}", *TINY,
            "--ckpt_path", str(student)]  # fmt: skip
    cli_main(args)
    cli_main([*args, "--seed_everything=1"])
    for n in (0, 1):
        run = tmp_path / f"version_{n}"
        assert (run / "test_results.json").is_file() and (run / "config.yaml").is_file()
    assert "seed_everything: 1" in (tmp_path / "version_1/config.yaml").read_text()
    assert "seed_everything: 0" in (tmp_path / "version_0/config.yaml").read_text()
