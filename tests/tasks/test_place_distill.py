"""PlaceTeacher and PlaceDistillation: label-map teacher on place batches, exact teacher targets, windows, checkpoints."""

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from structvpr.callbacks import PlaceWeighting
from structvpr.cli import cli_main
from structvpr.data.places import PlaceDataModule
from structvpr.tasks.place import PlaceStudent, PlaceTeacher
from structvpr.tasks.place_distill import PlaceDistillation
from structvpr.tasks.student import StructVPRStudent


def _dm(world, **kw):
    args = dict(places_per_batch=3, images_per_place=2, place_size_m=8.0, image_size=(32, 64), with_labels=True, num_workers=0)
    return PlaceDataModule(root=str(world), **{**args, **kw})


def _trainer(out, callbacks=(), **kw):
    args = dict(
        max_epochs=1,
        default_root_dir=str(out),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        accelerator="cpu",
    )
    return pl.Trainer(callbacks=list(callbacks), **{**args, **kw})


@pytest.fixture(scope="module")
def place_teacher(tiny_world, tmp_path_factory) -> Path:
    """A PlaceTeacher trained one epoch on the tiny world's label maps."""
    out = tmp_path_factory.mktemp("place-teacher")
    pl.seed_everything(0)
    teacher = PlaceTeacher(num_groups=5, lr=1e-3)
    trainer = _trainer(out)
    trainer.fit(teacher, datamodule=_dm(tiny_world))
    assert trainer.global_step > 0
    trainer.save_checkpoint(out / "teacher.ckpt")
    return out / "teacher.ckpt"


class Record(pl.Callback):
    """Keeps the first training batch and the task's teacher targets of it (read before the step)."""

    def __init__(self):
        self.batch = self.targets = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.batch is None:
            self.batch = {k: v.clone() for k, v in batch.items()}
            pl_module.prepare_window(batch_idx)  # callbacks run before the task's own hook
            self.targets = pl_module.teacher_targets(batch).clone()


@pytest.mark.parametrize("geometric", [True, False])
def test_each_images_teacher_target_is_the_teachers_descriptor_of_its_own_transformed_label_map(
    geometric, place_teacher, tiny_world, tmp_path
):
    pl.seed_everything(0)
    task = PlaceDistillation(teacher_ckpt=str(place_teacher), distill_weight=1.0, bank_batches=2)
    record = Record()
    dm = _dm(tiny_world, augment=False, rand_augment=(2, 15), rand_augment_geometric=geometric)
    with pytest.warns(UserWarning, match="runs on each batch's own transformed label maps") if geometric else _no_warning():
        _trainer(tmp_path, [record], max_steps=1).fit(task, datamodule=dm)
    assert task.teacher_cached is (not geometric)  # chosen from the transform: cached only when exact
    labels, ids = record.batch["label"], record.batch["image_index"]
    task.teacher.eval()
    with torch.no_grad():  # the teacher, one view at a time, on the label map that view's RGB came with
        each = torch.stack([task.teacher.pooled(m[None])[0] for m in labels.flatten(0, 1)]).view(*ids.shape, -1)
        plain = torch.stack([task.teacher.pooled(dm.train_images[int(i)]["label"][None])[0] for i in ids.flatten()])
    assert record.targets.shape == each.shape
    assert torch.allclose(record.targets, each, atol=1e-5)
    moved = (record.targets.flatten(0, 1) - plain).abs().amax(1) > 1e-4
    # with shear, translate and rotate, some views' maps moved, so a cache of un-augmented maps would be wrong
    assert bool(moved.any()) is geometric


class _no_warning:
    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.filterwarnings("error", message="cache_teacher is on")

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)


def test_the_loss_is_the_metric_loss_plus_lambda_times_the_weighted_mean_over_every_image(place_teacher, tiny_world, tmp_path):
    pl.seed_everything(0)
    task = PlaceDistillation(teacher_ckpt=str(place_teacher), distill_weight=2.5)
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(task, datamodule=_dm(tiny_world))
    batch = task.datamodule.train_dataset[0]
    weights = torch.rand(len(task.image_weights), generator=torch.Generator().manual_seed(0))
    task.set_image_weights(torch.arange(len(weights)), weights)
    task.prepare_window(0)
    task.eval()  # the same forward twice (no BatchNorm updates between them)
    with torch.no_grad():
        loss, _, _ = task.losses(batch)
        s = task.encoder.pooled(batch["image"].flatten(0, 1))
        t = task.teacher.pooled(batch["label"].flatten(0, 1))
        w = weights[batch["image_index"].flatten()]
        want = task.metric_loss(s, batch["place"].flatten()) + 2.5 * (w * (s - t).pow(2).sum(1)).mean()
    assert torch.allclose(loss, want, atol=1e-5)
    with pytest.raises(ValueError, match="sample weights must be >= 0"):
        task.set_image_weights(torch.tensor([0]), torch.tensor([-1.0]))


def test_a_cached_teacher_encodes_each_window_of_upcoming_batches_once(place_teacher, tiny_world, tmp_path):
    pl.seed_everything(0)
    task = PlaceDistillation(teacher_ckpt=str(place_teacher), bank_batches=2)
    _trainer(tmp_path).fit(task, datamodule=_dm(tiny_world))
    dataset = task.datamodule.train_dataset
    steps = len(dataset)
    assert steps >= 3
    windows = [np.unique(dataset.batches()[c : c + 2]) for c in range(0, steps, 2)]
    assert [task.window_ids(b)[1].tolist() for b in range(0, steps, 2)] == [w.tolist() for w in windows]
    assert task.window_ids(1)[0] == 0 and task.window_ids(2)[0] == 1
    assert task.banks["teacher"].images_encoded == sum(len(w) for w in windows)


def test_a_teacher_of_another_size_is_refused_unless_projected_and_the_projection_is_not_exported(
    place_teacher, tiny_world, tmp_path
):
    other = {"aggregator": "netvlad", "num_clusters": 2}  # 2 x 128 = 256-d against the teacher's 128
    with pytest.raises(ValueError, match="teacher descriptors have 128 dimensions but the student's have 256.*projection"):
        PlaceDistillation(teacher_ckpt=str(place_teacher), **other)
    task = PlaceDistillation(teacher_ckpt=str(place_teacher), teacher_projection=True, **other)
    assert task.projection.weight.shape == (128, 256)
    _trainer(tmp_path, max_steps=2).fit(task, datamodule=_dm(tiny_world))
    trained = {id(p) for group in task.trainer.optimizers[0].param_groups for p in group["params"]}
    assert id(task.projection.weight) in trained and not any(id(p) in trained for p in task.teacher.parameters())
    path = task.export_student(tmp_path / "student.ckpt")
    keys = torch.load(path, weights_only=True)["state_dict"].keys()
    assert keys and all(k.startswith("encoder.") for k in keys)
    images = torch.rand(2, 3, 32, 64)
    student = StructVPRStudent.load_from_checkpoint(path, weights_only=True)
    assert torch.allclose(student.encode(images), task.encode(images), atol=1e-6)


def test_a_checkpoint_reloads_without_the_teacher_or_student_files_and_needs_label_maps(place_teacher, tiny_world, tmp_path):
    import shutil

    pl.seed_everything(0)
    baseline = PlaceStudent()
    trainer = _trainer(tmp_path / "b", max_steps=1)
    trainer.fit(baseline, datamodule=_dm(tiny_world, with_labels=False))
    trainer.save_checkpoint(tmp_path / "baseline.ckpt")
    teacher = tmp_path / "teacher.ckpt"
    shutil.copy(place_teacher, teacher)
    task = PlaceDistillation(teacher_ckpt=str(teacher), student_ckpt=str(tmp_path / "baseline.ckpt"))
    for a, b in zip(task.encoder.state_dict().values(), baseline.encoder.state_dict().values()):
        assert torch.equal(a, b)  # starts from the baseline
    with pytest.raises(ValueError, match="reads label maps: set data.init_args.with_labels=true"):
        _trainer(tmp_path / "n", max_steps=1).fit(task, datamodule=_dm(tiny_world, with_labels=False))
    trainer = _trainer(tmp_path / "d", max_steps=1)
    trainer.fit(task, datamodule=_dm(tiny_world))
    trainer.save_checkpoint(tmp_path / "distill.ckpt")
    teacher.unlink()
    (tmp_path / "baseline.ckpt").unlink()
    again = PlaceDistillation.load_from_checkpoint(tmp_path / "distill.ckpt", weights_only=True)
    maps = torch.rand(2, 5, 32, 64)
    with torch.no_grad():
        assert torch.allclose(again.teacher.pooled(maps), task.teacher.eval().pooled(maps), atol=1e-6)
    images = torch.rand(2, 3, 32, 64)
    assert torch.allclose(again.encode(images), task.encode(images), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="teacher_ckpt: .* does not exist"):
        PlaceDistillation(teacher_ckpt=str(teacher))


def test_the_synthetic_modern_trio_runs_from_the_cli_teacher_baseline_then_weighted_distillation(tiny_world, tmp_path, repo_root):
    common = [
        f"--data.init_args.root={tiny_world}",
        "--data.init_args.image_size=[32, 64]",
        "--data.init_args.num_workers=0",
        "--data.init_args.places_per_batch=3",
        "--data.init_args.images_per_place=2",
        "--data.init_args.place_size_m=8",
        "--trainer.max_epochs=1",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
    ]
    configs = repo_root / "lightning_configs/modern/synthetic"
    best = {}
    for stage in ("teacher", "baseline"):
        cli = cli_main(
            ["fit", "--config", str(configs / f"{stage}.yaml"), *common, f"--trainer.default_root_dir={tmp_path / stage}"]
        )
        best[stage] = cli.trainer.checkpoint_callback.best_model_path
    assert isinstance(cli.model, PlaceStudent) and PlaceTeacher.load_from_checkpoint(best["teacher"]).encoder.trunk
    cli = cli_main(
        [
            "fit",
            "--config",
            str(configs / "distill.yaml"),
            *common,
            f"--model.init_args.teacher_ckpt={best['teacher']}",
            f"--model.init_args.student_ckpt={best['baseline']}",
            "--model.init_args.bank_batches=2",
            f"--trainer.default_root_dir={tmp_path / 'distill'}",
        ]
    )
    task, steps = cli.model, cli.trainer.global_step
    [weighting] = [c for c in cli.trainer.callbacks if isinstance(c, PlaceWeighting)]
    assert isinstance(task, PlaceDistillation) and task.teacher_cached  # colour jitter only: the cache is exact
    assert len(weighting.history) == -(-steps // 2)  # one weighting per window of 2 steps
    last = weighting.history[-1]
    assert torch.equal(task.image_weights[torch.from_numpy(last["image_ids"])], torch.from_numpy(last["weights"]))
    # The teacher's own hyper-parameters are saved, not the CLI's (those of the distillation task) ...
    saved = task.hparams["teacher_hparams"]
    assert saved["num_groups"] == 5 and "teacher_ckpt" not in saved and "in_chans" in saved
    # ... so `structvpr test` rebuilds the teacher from the distilled checkpoint alone.
    distilled = cli.trainer.checkpoint_callback.best_model_path
    test = ["test", "--config", str(configs / "distill.yaml"), *common, f"--ckpt_path={distilled}"]
    cli = cli_main([*test, f"--trainer.default_root_dir={tmp_path / 'test'}"])
    assert set(cli.model.test_results) >= {"R@1", "R@5"} and 0 <= cli.model.test_results["R@1"] <= 100
    with pytest.raises(ValueError, match="teacher_ckpt is required"):
        cli_main(["--config", str(configs / "distill.yaml"), *common], run=False)


@pytest.mark.parametrize("config", ["mixvpr_resnet50", "salad_dinov2", "boq_resnet50", "boq_dinov2"])
def test_published_modern_teacher_configs_read_five_label_channels_and_give_the_students_descriptor(config, repo_root):
    def build(stage):
        args = ["--config", str(repo_root / f"lightning_configs/modern/{config}/{stage}.yaml"), "--trainer.precision=32-true"]
        return cli_main([*args, "--trainer.accelerator=cpu", "--trainer.logger=false"], run=False)

    teacher, baseline = build("teacher"), build("baseline")
    assert isinstance(teacher.model, PlaceTeacher) and teacher.datamodule.hparams.with_labels
    assert teacher.model.encoder.pooled_dim == baseline.model.encoder.pooled_dim
    first = next(p for n, p in teacher.model.encoder.trunk.named_parameters() if p.ndim == 4)
    assert first.shape[1] == 5 and first.requires_grad  # the first convolution / patch embedding reads 5 groups
    assert teacher.datamodule.hparams.rand_augment == [3, 15] or teacher.datamodule.hparams.rand_augment == (3, 15)


def test_the_published_distill_config_builds_on_a_teacher_checkpoint(repo_root, tmp_path):
    args = ["--trainer.precision=32-true", "--trainer.accelerator=cpu", "--trainer.logger=false"]
    configs = repo_root / "lightning_configs/modern/mixvpr_resnet50"
    teacher = cli_main(["--config", str(configs / "teacher.yaml"), *args], run=False).model
    checkpoint = {
        "state_dict": teacher.state_dict(),
        "hyper_parameters": dict(teacher.hparams),
        "pytorch-lightning_version": pl.__version__,
    }
    torch.save(checkpoint, tmp_path / "teacher.ckpt")
    cli = cli_main(
        ["--config", str(configs / "distill.yaml"), *args, f"--model.init_args.teacher_ckpt={tmp_path / 'teacher.ckpt'}"],
        run=False,
    )
    task = cli.model
    assert isinstance(task, PlaceDistillation) and task.encoder.pooled_dim == task.teacher.pooled_dim == 4096
    assert any(isinstance(c, PlaceWeighting) for c in cli.trainer.callbacks) and cli.datamodule.hparams.with_labels


@pytest.mark.slow
def test_two_process_ddp_distillation_shares_each_window_and_weights_identically(place_teacher, tiny_world, tmp_path, repo_root):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(repo_root), "WANDB_MODE": "offline"}
    args = [
        sys.executable,
        "-m",
        "structvpr",
        "fit",
        "--config",
        str(repo_root / "lightning_configs/modern/synthetic/distill.yaml"),
        f"--model.init_args.teacher_ckpt={place_teacher}",
        "--model.init_args.bank_batches=2",
        f"--data.init_args.root={tiny_world}",
        "--data.init_args.image_size=[32, 64]",
        "--data.init_args.num_workers=0",
        "--data.init_args.places_per_batch=2",
        "--data.init_args.images_per_place=2",
        "--data.init_args.place_size_m=8",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.max_epochs=1",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.callbacks+=tests.tasks.helpers.RecordPlaceBatches",
        f"--trainer.callbacks.out_dir={tmp_path / 'places'}",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=repo_root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / "places" / f"places_rank{r}.pt") for r in range(2))
    # step t: rank r trains batch 2t + r, so every window of 2 steps holds 4 batches of both processes
    assert r0["batches"] == list(range(0, 2 * len(r0["batches"]), 2)) and r1["batches"] == [b + 1 for b in r0["batches"]]
    assert torch.equal(r0["weights"], r1["weights"])  # one model
    assert torch.equal(r0["image_weights"], r1["image_weights"]) and not torch.all(r0["image_weights"] == 1)
    # each process encoded its share of every window's images for the teacher (the other share all-gathered)
    assert r0["window_images"] == r1["window_images"] > 0
    assert r0["teacher_encoded"] + r1["teacher_encoded"] == r0["window_images"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["baseline", "distill"])
def test_kill_9_mid_epoch_on_place_batches_then_resume_equals_the_uninterrupted_run(
    stage, place_teacher, tiny_world, tmp_path, repo_root
):
    """The sampler, augmentation, teacher windows and per-image weights all resume exactly after a SIGKILL."""
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
        str(repo_root / f"lightning_configs/modern/synthetic/{stage}.yaml"),
        f"--data.init_args.root={tiny_world}",
        "--data.init_args.image_size=[32, 64]",
        "--data.init_args.num_workers=0",
        "--data.init_args.places_per_batch=3",
        "--data.init_args.images_per_place=2",
        "--data.init_args.place_size_m=8",
        "--trainer.max_epochs=3",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
    ]
    if stage == "distill":
        pl.seed_everything(0)
        start = PlaceStudent()
        trainer = _trainer(tmp_path / "start", max_steps=1)
        trainer.fit(start, datamodule=_dm(tiny_world, with_labels=False))
        trainer.save_checkpoint(tmp_path / "start.ckpt")
        base += [
            f"--model.init_args.teacher_ckpt={place_teacher}",
            f"--model.init_args.student_ckpt={tmp_path / 'start.ckpt'}",
            "--model.init_args.bank_batches=2",  # windows of 2 steps: the kill falls inside the first
        ]

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
        "--trainer.callbacks.batch=1",
    )
    assert killed.returncode == -9, killed.stderr[-3000:]  # mid-epoch 1: last.ckpt holds the end of epoch 0
    resumed = run(tmp_path / "killed", "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    finals = [torch.load(tmp_path / f / "checkpoints" / "last.ckpt", weights_only=True) for f in ("whole", "killed")]
    assert finals[0]["global_step"] == finals[1]["global_step"] > 0
    assert finals[0]["state_dict"].keys() == finals[1]["state_dict"].keys()
    for key, value in finals[0]["state_dict"].items():
        torch.testing.assert_close(finals[1]["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)
    if stage == "distill":  # the last window's weights are not all 1: the weighting ran, and resumed alike
        weights = finals[1]["state_dict"]["image_weights"]
        assert weights.numel() > 0 and not torch.allclose(weights, torch.ones_like(weights))
