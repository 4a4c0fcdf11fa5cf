"""PlaceStudent: the metric loss and miner of pytorch-metric-learning, the recipes' schedules, resumption."""

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from structvpr.cli import cli_main
from structvpr.data.places import PlaceDataModule
from structvpr.tasks.place import PlaceStudent
from structvpr.tasks.student import StructVPRStudent


def test_default_loss_is_the_recipes_multi_similarity_and_per_image_losses_average_to_it():
    from pytorch_metric_learning import losses, miners

    model = PlaceStudent()
    assert isinstance(model.loss_fn, losses.MultiSimilarityLoss) and isinstance(model.miner, miners.MultiSimilarityMiner)
    assert (model.loss_fn.alpha, model.loss_fn.beta, model.loss_fn.base, model.miner.epsilon) == (1.0, 50.0, 0.0, 0.1)
    torch.manual_seed(0)
    desc = F.normalize(torch.randn(24, 16), dim=-1)
    places = torch.arange(6).repeat_interleave(4)
    total = model.metric_loss(desc, places)
    per = model.per_image_losses(desc, places)
    assert per.shape == (24,) and torch.allclose(per.mean(), total, atol=1e-6)
    # the per-anchor formula: log(1 + sum_p e^-S_ap) + log(1 + sum_n e^(50 S_an)) / 50 over the mined pairs
    a1, p, a2, n = model.miner(desc, places)
    sim = desc @ desc.T
    anchor = 0
    pos = sim[anchor, p[a1 == anchor]]
    neg = sim[anchor, n[a2 == anchor]]
    want = torch.log1p(torch.exp(-pos).sum()) + torch.log1p(torch.exp(50 * neg).sum()) / 50
    assert torch.allclose(per[anchor], want, atol=1e-5)


def test_a_loss_given_by_class_path_is_built_and_a_bad_one_named():
    model = PlaceStudent(
        loss={"class_path": "pytorch_metric_learning.losses.ContrastiveLoss", "init_args": {"neg_margin": 0.5}}, miner=None
    )
    assert type(model.loss_fn).__name__ == "ContrastiveLoss" and model.miner is None
    with pytest.raises(ValueError, match="loss: cannot import pytorch_metric_learning.losses.NoSuchLoss"):
        PlaceStudent(loss={"class_path": "pytorch_metric_learning.losses.NoSuchLoss"})


def test_schedules_of_the_recipes_have_known_factors():
    # MixVPR's shape: warm-up over 10 steps, x0.3 at epochs 2 and 4 (5 steps per epoch)
    mix = PlaceStudent(warmup_steps=10, milestones=[2, 4], gamma=0.3)
    assert [round(mix.lr_factor(s, 5), 6) for s in (0, 4, 9, 10, 19, 20)] == [0.1, 0.5, 1.0, 0.3, 0.3, 0.09]
    # SALAD's: linear from 1 to 0.2 over 100 steps, then flat
    salad = PlaceStudent(linear_end_factor=0.2, linear_steps=100)
    assert [round(salad.lr_factor(s, 5), 6) for s in (0, 50, 100, 500)] == [1.0, 0.6, 0.2, 0.2]
    steps = PlaceStudent(milestones=[3], milestone_unit="step", gamma=0.5)
    assert [steps.lr_factor(s, 100) for s in (2, 3)] == [1.0, 0.5]


def _fit(world, out, epochs, ckpt=None):
    pl.seed_everything(0)
    model = PlaceStudent(lr=1e-3, warmup_steps=3, milestones=[1], gamma=0.5)
    dm = PlaceDataModule(
        places_per_batch=3, images_per_place=2, place_size_m=8.0, root=str(world), image_size=(32, 64), with_labels=False
    )
    trainer = pl.Trainer(
        max_epochs=epochs,
        default_root_dir=out,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        accelerator="cpu",
        deterministic=True,
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    return trainer, model


def test_training_resumed_after_an_epoch_repeats_the_uninterrupted_run(tiny_world, tmp_path):
    _, whole = _fit(tiny_world, tmp_path / "a", 2)
    first, _ = _fit(tiny_world, tmp_path / "b", 1)
    first.save_checkpoint(tmp_path / "epoch0.ckpt")
    _, resumed = _fit(tiny_world, tmp_path / "c", 2, ckpt=str(tmp_path / "epoch0.ckpt"))
    for (name, a), b in zip(whole.encoder.state_dict().items(), resumed.encoder.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.5e-3)  # the epoch-1 step


def test_cli_fits_the_synthetic_modern_config_and_exports_a_plain_student(tiny_world, tmp_path, repo_root):
    cli = cli_main(
        [
            "fit",
            "--config",
            str(repo_root / "lightning_configs/modern/synthetic/baseline.yaml"),
            f"--data.init_args.root={tiny_world}",
            "--data.init_args.image_size=[32, 64]",
            "--data.init_args.num_workers=0",
            "--data.init_args.places_per_batch=3",
            "--data.init_args.images_per_place=2",
            "--data.init_args.place_size_m=8",
            "--trainer.max_epochs=1",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
        ]
    )
    model = cli.model
    assert isinstance(model, PlaceStudent) and cli.trainer.global_step == len(cli.datamodule.train_dataset)
    again = PlaceStudent.load_from_checkpoint(cli.trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert again.hp.warmup_steps == 20 and type(again.miner).__name__ == "MultiSimilarityMiner"
    path = model.export_student(tmp_path / "student.ckpt")
    student = StructVPRStudent.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    images = torch.rand(2, 3, 32, 64)
    assert torch.allclose(student.encode(images), model.encode(images), atol=1e-6)


@pytest.mark.parametrize(
    ("config", "dim", "agg_params", "size"),
    [
        ("mixvpr_resnet50", 4096, 2_337_604, 320),
        ("salad_dinov2", 8448, 1_411_009, 322),
        ("boq_resnet50", 16384, 15_301_152, 384),
        ("boq_dinov2", 12288, 8_626_080, 322),
    ],
)
def test_published_modern_configs_build_the_reference_models(config, dim, agg_params, size, repo_root):
    """Each GPU config builds (random weights, nothing read or downloaded) the recipe's model: its descriptor
    size and aggregator parameter count are the reference's, and it encodes an image at its test size."""
    cli = cli_main(
        [
            "--config",
            str(repo_root / f"lightning_configs/modern/{config}/baseline.yaml"),
            "--trainer.precision=32-true",
            "--trainer.accelerator=cpu",
            "--trainer.logger=false",
        ],
        run=False,
    )
    model = cli.model
    assert isinstance(model, PlaceStudent) and model.encoder.pooled_dim == dim
    assert sum(p.numel() for p in model.encoder.aggregator.parameters()) == agg_params
    assert cli.datamodule.eval_image_size == (size, size) and cli.datamodule.hparams.places_per_batch in (60, 120, 128)
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, size, size)).shape == (1, dim)
    trainable = [n.split(".") for n, p in model.encoder.trunk.named_parameters() if p.requires_grad]
    if "dinov2" in config:  # only the last blocks train (SALAD 4, BoQ 2 of 12), the embeddings are frozen
        blocks = {int(n[2]) for n in trainable if n[1] == "blocks"}
        assert blocks == set(range(8 if config == "salad_dinov2" else 10, 12))
        assert {n[1] for n in trainable} <= {"blocks", "norm"}
    else:  # ResNet50 cut after layer3, conv1 .. layer2 frozen
        assert {n[1] for n in trainable} == {"layer3"}


@pytest.mark.slow
def test_two_process_ddp_takes_whole_other_batches_and_all_gathers_the_loss(tiny_world, tmp_path, repo_root):
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
        str(repo_root / "lightning_configs/modern/synthetic/baseline.yaml"),
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
    assert r0["loss"] == r1["loss"] == "DistributedLossWrapper"
    assert torch.equal(r0["weights"], r1["weights"])  # one model: gradients averaged over both processes
    assert len(r0["places"]) == len(r1["places"]) >= 2
    # every step, the two processes train on different places (whole batches, never half of one)
    for a, b in zip(r0["places"], r1["places"]):
        assert len(a) == len(b) == 2 and (not set(a) & set(b) or a == b)  # equal only for DistributedSampler's padding
    assert sum(a != b for a, b in zip(r0["places"], r1["places"])) >= len(r0["places"]) - 1
