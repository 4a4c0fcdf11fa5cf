"""Training-step cost of distillation (teacher cache vs teacher online) against the RGB baseline; writes JSON.

The three variants run interleaved (round robin) on the same pre-loaded batches of the demo
world, so machine noise hits them alike; the step is forward, loss, backward and optimiser
step. Data loading is excluded (cached distillation reads the same RGB tuples as the
baseline; online distillation also needs every tuple's label maps, which costs more).

    python benchmarks/train_step.py [--steps 30] [--out benchmarks/results/train_step.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from structvpr.data import VPRDataModule, synthetic
from structvpr.tasks import SegTeacher, StructVPRDistillation, StructVPRStudent


def _teacher_checkpoint(folder: Path) -> str:
    teacher = SegTeacher()
    path = folder / "teacher.ckpt"
    torch.save(
        {
            "state_dict": teacher.state_dict(),
            "hyper_parameters": dict(teacher.hparams),
            "pytorch-lightning_version": pl.__version__,
        },
        path,
    )
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/synthetic-demo")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, nargs=2, default=[48, 96])
    parser.add_argument("--out", default="benchmarks/results/train_step.json")
    ns = parser.parse_args()
    if not Path(ns.root).exists():
        synthetic.generate(ns.root, "demo", seed=0)
    pl.seed_everything(0)
    dm = VPRDataModule(
        root=ns.root, image_size=tuple(ns.image_size), batch_size=ns.batch_size, cache_images=True, synthetic_preset=None
    )
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    batches = [next(loader) for _ in range(min(ns.steps, len(dm.train_dataloader())))]
    with tempfile.TemporaryDirectory() as tmp:
        teacher_ckpt = _teacher_checkpoint(Path(tmp))
        models = {
            "baseline": StructVPRStudent(),
            "distill_cached": StructVPRDistillation(teacher_ckpt=teacher_ckpt, cache_teacher=True),
            "distill_online": StructVPRDistillation(teacher_ckpt=teacher_ckpt, cache_teacher=False),
        }
    cache_seconds = None
    # The images of the timed batches: what one sub-epoch's teacher pass encodes for the cached path.
    ids = np.unique(torch.cat([b["image_index"].flatten() for b in batches]).numpy())
    for model in models.values():
        model.log = lambda *args, **kwargs: None  # outside a Trainer loop there is nowhere to log
        model.train()
        if isinstance(model, StructVPRDistillation):
            model.sample_weights = torch.ones(dm.train_dataset.num_training_queries)
            model.teacher_cached = bool(model.hparams.cache_teacher)
            if model.teacher_cached:
                start = time.perf_counter()
                model.banks["teacher"].bind(dm.train_images_dataloader)
                model.banks["teacher"].descriptors(ids)  # the sub-epoch's teacher pass
                cache_seconds = time.perf_counter() - start
    optims = {name: model.configure_optimizers() for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for step, batch in enumerate(batches * 2):
        for name, model in models.items():
            start = time.perf_counter()
            loss = model.training_step(batch, step)
            optims[name].zero_grad()
            loss.backward()
            optims[name].step()
            if step >= 3:  # warm-up excluded
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) * 1000 for name, t in times.items()}
    result = {
        "machine": {"threads": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
        "batch": {"tuples": ns.batch_size, "images_per_tuple": batches[0]["image"].shape[1], "image_size": ns.image_size},
        "median_step_ms": {k: round(v, 1) for k, v in median.items()},
        "ratio_to_baseline": {k: round(v / median["baseline"], 3) for k, v in median.items()},
        "teacher_cache_build_seconds": round(cache_seconds or 0.0, 2),
        "teacher_cache_images": len(ids),
        "steps_timed": len(times["baseline"]),
    }
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
