import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch

from structvpr.bank import encode_loader
from structvpr.callbacks import ExportStudent, HardNegativeMining, SampleWeighting
from structvpr.tasks import StructVPRDistillation, StructVPRStudent
from tests.tasks.helpers import RecordWeights, _dm, _trainer


def test_teacher_is_frozen_and_not_optimised(trained, tiny_world, tmp_path):
    model = StructVPRDistillation(teacher_ckpt=trained["teacher"], student_ckpt=trained["baseline"])
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    trainer = _trainer(tmp_path, epochs=2, callbacks=[HardNegativeMining(), SampleWeighting()], enable_checkpointing=False)
    trainer.fit(model, datamodule=_dm(tiny_world))
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k  # weights and BatchNorm statistics
    assert any(not torch.equal(v, student_before[k]) for k, v in model.encoder.state_dict().items())
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in model.teacher.parameters()}
    assert all(not p.requires_grad for p in model.teacher.parameters())


class _Targets(pl.Callback):
    """Compares, for the first training batches, the task's teacher targets with the teacher run on
    the batch's own label maps and with the un-augmented (cacheable) descriptors."""

    def __init__(self):
        self.online_diff, self.cache_diff = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        targets = pl_module.teacher_targets(batch)
        with torch.no_grad():
            online = pl_module.teacher.pooled(batch["label"].flatten(0, 1)).view_as(targets)
        cached = pl_module.banks["teacher"].descriptors(batch["image_index"].flatten().numpy()).view_as(targets)
        self.online_diff.append((targets - online).abs().max().item())
        self.cache_diff.append((targets - cached).abs().max().item())


def test_cached_teacher_targets_equal_the_online_teacher_without_geometric_augmentation(trained, tiny43_world, tmp_path):
    probe = _Targets()
    model = StructVPRDistillation(teacher_ckpt=trained["teacher"])
    dm = _dm(tiny43_world, image_size=(48, 64))  # colour jitter on: photometric only
    _trainer(tmp_path, callbacks=[HardNegativeMining(), probe], enable_checkpointing=False, limit_val_batches=0).fit(
        model, datamodule=dm
    )
    assert model.teacher_cached
    assert max(probe.online_diff) < 1e-5 and max(probe.cache_diff) == 0.0


def test_teacher_targets_follow_the_student_view_under_geometric_augmentation(trained, tiny43_world, tmp_path):
    probe = _Targets()
    model = StructVPRDistillation(teacher_ckpt=trained["teacher"], cache_teacher=True)
    dm = _dm(tiny43_world, image_size=(48, 64), crop_scale=0.5)
    with pytest.warns(UserWarning, match="geometric augmentation .* runs on each batch's own transformed label maps"):
        _trainer(tmp_path, callbacks=[HardNegativeMining(), probe], enable_checkpointing=False, limit_val_batches=0).fit(
            model, datamodule=dm
        )
    assert not model.teacher_cached
    assert max(probe.online_diff) < 1e-5  # the teacher's descriptor of exactly this batch's cropped maps
    assert max(probe.cache_diff) > 1e-3  # a cache of un-augmented maps would have pulled towards other views


def test_weights_and_callback_state_survive_checkpoint_and_resume(trained, tiny_world, tmp_path):
    weighting = SampleWeighting(tau=3)
    ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    model = StructVPRDistillation(teacher_ckpt=trained["teacher"], student_ckpt=trained["baseline"])
    _trainer(tmp_path, epochs=2, callbacks=[HardNegativeMining(), weighting, ckpt_cb]).fit(model, datamodule=_dm(tiny_world))
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    state = next(v for k, v in saved["callbacks"].items() if k.startswith("SampleWeighting"))
    assert "weights" not in state  # one owner: the task's buffer, saved with its state dict
    assert torch.equal(saved["state_dict"]["sample_weights"], model.sample_weights)
    assert (model.sample_weights != 1).any() and state["subepoch"] == 1
    mining_state = next(v for k, v in saved["callbacks"].items() if k.startswith("HardNegativeMining"))
    assert mining_state["refreshes"] == 2

    resumed_weighting = SampleWeighting(tau=3)
    recorder = RecordWeights()
    resumed = StructVPRDistillation(teacher_ckpt=trained["teacher"])
    dm = _dm(tiny_world)
    _trainer(tmp_path, epochs=3, callbacks=[HardNegativeMining(), resumed_weighting, recorder]).fit(
        resumed, datamodule=dm, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert torch.equal(recorder.at_train_start, saved["state_dict"]["sample_weights"])
    assert torch.equal(resumed_weighting.teacher_ranks, state["teacher_ranks"])
    assert len(recorder.per_epoch) == 1  # only epoch 2 ran


def test_exported_student_loads_in_a_fresh_process_without_the_teacher(trained, tiny_world, tmp_path):
    model = StructVPRDistillation(teacher_ckpt=trained["teacher"], student_ckpt=trained["baseline"])
    exporter = ExportStudent()
    _trainer(tmp_path, callbacks=[exporter], enable_checkpointing=False).fit(model, datamodule=_dm(tiny_world))
    assert exporter.path is not None and exporter.path.is_file()
    images = torch.randn(5, 3, 32, 64)
    torch.save(images, tmp_path / "images.pt")
    expected = model.encode(images)
    script = (
        "import sys, torch\n"
        "from structvpr import StructVPRStudent\n"
        f"m = StructVPRStudent.load_from_checkpoint({str(exporter.path)!r}, map_location='cpu')\n"
        f"d = m.encode(torch.load({str(tmp_path / 'images.pt')!r}))\n"
        "assert not any(n in sys.modules for n in ('structvpr.tasks.teacher', 'structvpr.tasks.distill', 'structvpr.data'))\n"
        f"torch.save(d, {str(tmp_path / 'out.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    got = torch.load(tmp_path / "out.pt")
    assert got.shape == (5, model.encoder.descriptor_dim)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(5))


def test_size_mismatch_is_caught_at_construction(trained):
    with pytest.raises(ValueError, match="teacher descriptors have 128 dimensions but the student's have 2048"):
        StructVPRDistillation(teacher_ckpt=trained["teacher"], aggregator="netvlad")
    with pytest.raises(FileNotFoundError, match="teacher_ckpt: nowhere.ckpt does not exist"):
        StructVPRDistillation(teacher_ckpt="nowhere.ckpt")


def test_nan_loss_stops_with_a_clear_error(tiny_world, tmp_path):
    model = StructVPRStudent()
    model.encoder.trunk.register_forward_hook(lambda m, i, o: o * float("nan"))
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 0, step 0, training queries \["):
        _trainer(tmp_path, enable_checkpointing=False).fit(model, datamodule=_dm(tiny_world))


def test_netvlad_is_initialised_by_kmeans_before_mining_encodes(tiny_world, tmp_path):
    import warnings

    model = StructVPRStudent(aggregator="netvlad", num_clusters=4, kmeans_images=10)
    assert not bool(model.encoder.aggregator.initialised)
    with warnings.catch_warnings():  # mining's first sub-epoch encodes in on_fit_start: centroids must be set by then
        warnings.filterwarnings("error", message="NetVLAD encodes with random centroids")
        _trainer(tmp_path, callbacks=[HardNegativeMining()], enable_checkpointing=False, limit_val_batches=1).fit(
            model, datamodule=_dm(tiny_world)
        )
    assert bool(model.encoder.aggregator.initialised)
    assert model.encoder.descriptor_dim == 4 * 128


def test_student_encode_checks_its_input():
    with pytest.raises(ValueError, match=r"images must be \(B, 3, H, W\)"):
        StructVPRStudent().encode(torch.zeros(2, 5, 8, 8))


@pytest.mark.slow
def test_two_process_ddp_fit_gives_identical_weights_on_every_rank(trained, tiny_world, tmp_path, repo_root):
    import os

    env = {**os.environ, "PYTHONPATH": str(repo_root), "WANDB_MODE": "offline"}
    args = [
        sys.executable,
        "-m",
        "structvpr",
        "fit",
        "--config",
        str(repo_root / "lightning_configs/synthetic/distill.yaml"),
        f"--data.init_args.root={tiny_world}",
        "--data.init_args.image_size=[32, 64]",
        "--data.init_args.num_workers=0",
        "--data.init_args.batch_size=4",
        f"--model.init_args.teacher_ckpt={trained['teacher']}",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=2",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.callbacks+=tests.tasks.helpers.RecordWeights",
        f"--trainer.callbacks.out_dir={tmp_path / 'weights'}",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=repo_root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(tmp_path / "weights" / "weights_rank0.pt")
    w1 = torch.load(tmp_path / "weights" / "weights_rank1.pt")
    assert w0.shape[0] == 2  # two epochs, weights refreshed at each start
    assert torch.equal(w0, w1)
    assert (w0 != 1).any()  # really set by SampleWeighting, not the all-ones default


@pytest.mark.slow
def test_two_process_encoding_splits_the_work_and_equals_one_process(trained, tiny_world, tmp_path, repo_root):
    import os

    env = {**os.environ, "PYTHONPATH": str(repo_root), "WANDB_MODE": "offline"}
    records = {}
    for devices in (1, 2):
        out = tmp_path / f"devices{devices}"
        args = [
            sys.executable,
            "-m",
            "structvpr",
            "fit",
            "--config",
            str(repo_root / "lightning_configs/synthetic/distill.yaml"),
            f"--data.init_args.root={tiny_world}",
            "--data.init_args.image_size=[32, 64]",
            "--data.init_args.num_workers=0",
            "--data.init_args.batch_size=4",
            f"--model.init_args.teacher_ckpt={trained['teacher']}",
            f"--model.init_args.student_ckpt={trained['baseline']}",
            "--trainer.accelerator=cpu",
            f"--trainer.devices={devices}",
            "--trainer.strategy=ddp",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1",
            "--trainer.limit_val_batches=0",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={out}",
            "--trainer.callbacks+=tests.tasks.helpers.RecordSubepoch",
            f"--trainer.callbacks.out_dir={out}",
        ]
        proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=repo_root, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        records[devices] = [torch.load(out / f"subepoch_rank{r}.pt") for r in range(devices)]
    (one,), (r0, r1) = records[1], records[2]
    # Each process encoded about half of the sub-epoch's images (student and teacher passes).
    assert abs(r0["encoded"] - r1["encoded"]) <= 2 and r0["encoded"] + r1["encoded"] == one["encoded"]
    for rec in (r0, r1):
        assert torch.equal(rec["tuples"], one["tuples"])  # the same mined tuples
        assert torch.equal(rec["ids"], one["ids"])
        torch.testing.assert_close(rec["descriptors"], one["descriptors"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(rec["weights"], one["weights"], atol=1e-6, rtol=0)


def test_normalised_weighting_trains_with_mean_one_weights(trained, tiny_world, tmp_path):
    model = StructVPRDistillation(teacher_ckpt=trained["teacher"], student_ckpt=trained["baseline"])
    weighting = SampleWeighting(normalize=True)
    _trainer(tmp_path, callbacks=[HardNegativeMining(), weighting], enable_checkpointing=False).fit(
        model, datamodule=_dm(tiny_world)
    )
    weights = model.sample_weights
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-5)
    assert weights.max() > 1.0 and (weights[weights > 0].min() < 1.0)  # redistributed, not all ones


def test_weighting_runs_where_a_full_teacher_cache_would_not_fit(trained, tiny_world, tmp_path, monkeypatch):
    import structvpr.utils.memory as memory

    dm = _dm(tiny_world, cache_queries=4)
    dm.setup("fit")
    full = len(dm.train_images) * 128 * 4  # every training image's teacher descriptor, float32
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: full)  # half of it is free for us
    weighting = SampleWeighting(ranks="subepoch")
    model = StructVPRDistillation(teacher_ckpt=trained["teacher"])
    _trainer(tmp_path, epochs=3, callbacks=[HardNegativeMining(cache_negatives=6), weighting], enable_checkpointing=False).fit(
        model, datamodule=dm
    )
    assert model.current_epoch == 3 and weighting.subepoch == 2
    assert weighting.last_stats["weighting/rank_database_size"] < len(dm.train_images) / 2
    # The exact global ranks need every teacher descriptor: refused up front, naming the way out.
    with pytest.raises(
        ValueError,
        match=r"teacher descriptors of every training image .* more than half the free "
        r"memory of cpu .*ranks='subepoch'",
    ):
        _trainer(
            tmp_path,
            callbacks=[HardNegativeMining(cache_negatives=6), SampleWeighting(ranks="global")],
            enable_checkpointing=False,
        ).fit(StructVPRDistillation(teacher_ckpt=trained["teacher"]), datamodule=_dm(tiny_world, cache_queries=4))


def test_weighting_needs_mining_before_it(trained, tiny_world, tmp_path):
    model = StructVPRDistillation(teacher_ckpt=trained["teacher"])
    with pytest.raises(ValueError, match="put HardNegativeMining before it"):
        _trainer(tmp_path, callbacks=[SampleWeighting(), HardNegativeMining()]).fit(model, datamodule=_dm(tiny_world))


def test_distillation_checkpoint_reloads_after_its_teacher_file_is_deleted(trained, tiny_world, tmp_path):
    import shutil

    teacher_file = tmp_path / "teacher.ckpt"
    shutil.copy(trained["teacher"], teacher_file)
    model = StructVPRDistillation(teacher_ckpt=str(teacher_file), student_ckpt=trained["baseline"])
    trainer = _trainer(tmp_path, callbacks=[HardNegativeMining()], enable_checkpointing=False)
    trainer.fit(model, datamodule=_dm(tiny_world))
    trainer.save_checkpoint(tmp_path / "distill.ckpt")
    teacher_file.unlink()
    reloaded = StructVPRDistillation.load_from_checkpoint(tmp_path / "distill.ckpt", map_location="cpu")
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key  # teacher and student weights alike
    assert reloaded.hparams.teacher_hparams["num_groups"] == 5
    with pytest.raises(FileNotFoundError, match="teacher_ckpt: .*teacher.ckpt does not exist"):
        StructVPRDistillation(teacher_ckpt=str(teacher_file))  # a new run still needs the file


def _fold_teacher(tiny_world, tmp_path, fold: int) -> str:
    """A briefly trained SegTeacher that never saw the training queries of ``fold`` (of 2)."""
    from structvpr.tasks import SegTeacher

    pl.seed_everything(10 + fold)
    model = SegTeacher()
    trainer = _trainer(tmp_path / f"fold{fold}", enable_checkpointing=False, callbacks=[HardNegativeMining()])
    trainer.fit(model, datamodule=_dm(tiny_world, query_folds=2, held_out_fold=fold))
    path = tmp_path / f"fold{fold}.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


def test_crossfit_teachers_rank_exactly_the_queries_they_never_trained_on(trained, tiny_world, tmp_path):
    import numpy as np

    from structvpr.tasks import SegTeacher

    folds = [_fold_teacher(tiny_world, tmp_path, k) for k in (0, 1)]
    weighting = SampleWeighting(crossfit_teachers=folds, ranks="subepoch")
    model = StructVPRDistillation(teacher_ckpt=trained["teacher"], student_ckpt=trained["baseline"])
    dm = _dm(tiny_world)
    _trainer(tmp_path, epochs=2, callbacks=[HardNegativeMining(), weighting], enable_checkpointing=False).fit(
        model, datamodule=dm
    )
    assert [h["subepoch"] for h in weighting.history] == [0, 1]
    record = weighting.history[-1]
    np.testing.assert_allclose(record["weights"], model.sample_weights[torch.from_numpy(record["queries"])].numpy())
    # Independent computation: each query's rank under the teacher of its fold, by brute force.
    images = dm.train_images
    n_db = images.num_database
    database = dm.training_tuples.subepoch_database
    utm = images.utm.numpy()
    expected = np.zeros(len(record["image_ids"]), dtype=np.int64)
    for k, path in enumerate(folds):
        teacher = SegTeacher.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()
        with torch.no_grad():
            desc = {i: teacher.encoder.pooled(images[i]["label"][None])[0].numpy() for i in [*database, *record["image_ids"]]}
        for row, q in enumerate(record["image_ids"]):
            if (q - n_db) % 2 != k:
                continue
            dist = np.array([np.linalg.norm(desc[q] - desc[d]) for d in database])
            order = database[np.argsort(dist, kind="stable")]
            hits = np.flatnonzero(np.linalg.norm(utm[order] - utm[q], axis=1) <= 25.0)
            expected[row] = hits[0] + 1 if len(hits) and hits[0] < 100 else 101
    np.testing.assert_array_equal(record["teacher_ranks"], expected)
    # The task's own teacher, which trained on every query, ranks them differently.
    own = SampleWeighting(ranks="subepoch")
    _trainer(tmp_path / "own", epochs=2, callbacks=[HardNegativeMining(), own], enable_checkpointing=False).fit(
        StructVPRDistillation(teacher_ckpt=trained["teacher"], student_ckpt=trained["baseline"]), datamodule=_dm(tiny_world)
    )
    assert not np.array_equal(own.history[-1]["teacher_ranks"], record["teacher_ranks"])


def test_crossfit_needs_two_teachers():
    with pytest.raises(ValueError, match="at least 2 checkpoints"):
        SampleWeighting(crossfit_teachers=["one.ckpt"])


def test_self_distillation_control_distils_an_rgb_teacher_on_the_rgb_images(trained, tiny_world, tmp_path):
    """teacher_input='image': the teacher is a StructVPRStudent (here the baseline itself) whose targets
    are its own descriptors of the tuple's RGB images, cached and online alike; it reloads from its checkpoint."""
    import numpy as np

    from structvpr.tasks import StructVPRDistillation, StructVPRStudent

    baseline = StructVPRStudent.load_from_checkpoint(trained["baseline"], map_location="cpu", weights_only=True)
    with pytest.raises(TypeError, match="SegTeacher|StructVPRStudent"):
        StructVPRDistillation(teacher_ckpt=trained["baseline"])  # an RGB checkpoint is no label-map teacher
    seen = {}

    class Targets(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                images = batch["image"].flatten(0, 1)
                with torch.no_grad():
                    want = baseline.encoder.eval().pooled(images).view(*batch["image"].shape[:2], -1)
                pl_module.teacher_cached = False
                seen["online"] = (pl_module.teacher_targets(batch) - want).abs().max().item()
                pl_module.teacher_cached = True
                ids = batch["image_index"].flatten().numpy()
                ds = trainer.datamodule.train_dataset
                plain = encode_loader(baseline.encoder, trainer.datamodule.train_images_dataloader(ids, "image"))
                seen["cached"] = (pl_module.teacher_targets(batch).flatten(0, 1) - plain).abs().max().item()
                seen["n"] = len(np.unique(ids)), ds.num_database

    model = StructVPRDistillation(teacher_ckpt=trained["baseline"], student_ckpt=trained["baseline"], teacher_input="image")
    trainer = _trainer(tmp_path, callbacks=[HardNegativeMining(), Targets()], limit_val_batches=0)
    trainer.fit(model, datamodule=_dm(tiny_world, augment=False))
    assert seen["online"] < 1e-5 and seen["cached"] < 1e-5
    trainer.save_checkpoint(tmp_path / "self.ckpt")
    again = StructVPRDistillation.load_from_checkpoint(tmp_path / "self.ckpt", map_location="cpu", weights_only=True)
    assert again.teacher_key == "image"
    saved, trained_teacher = again.teacher.state_dict(), model.teacher.state_dict()
    assert saved.keys() == trained_teacher.keys() and all(torch.equal(saved[k], trained_teacher[k]) for k in saved)
