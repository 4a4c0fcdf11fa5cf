"""Step time of structure distillation on place batches against the baseline's bare recipe step, side by side.

For each model (``lightning_configs/modern/<model>/{baseline,teacher}.yaml``, random weights), a P x K
place batch of random RGB images and one-hot label maps is timed alternately (median of ``--steps``
after warm-up) in four ways:

- ``baseline``: the recipe's step (encode, multi-similarity miner and loss, backward, optimiser step);
- ``distill_cached``: the same plus the distillation term against teacher descriptors already held
  (photometric-only augmentation: the teacher is run once per window, see below);
- ``distill_online``: the same plus the frozen teacher's forward on the batch's own label maps
  (geometric augmentation);
- per window of ``--bank-batches`` steps, amortised per step: the teacher's pass over the window's
  images (the cache, ``window_teacher``) and the weighting's student pass plus the two rank searches
  (``window_weighting``).

Ratios to ``baseline`` are what to read (these machines are shared and noisy). On a GPU the batch is
the config's own (P x K at the training size) under bf16 autocast; on a CPU, or with ``--quick``, the
cut-down sizes of ``CPU_SIZES`` in float32. Writes JSON.

    python benchmarks/place_distill_step.py [--models synthetic boq_resnet50] [--out benchmarks/results/place_distill_step.json]
    python benchmarks/place_distill_step.py --models mixvpr_resnet50 salad_dinov2 boq_resnet50 boq_dinov2   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from structvpr.callbacks.place_weighting import window_positives, window_ranks
from structvpr.lightning_cli import cli_main
from structvpr.models.teacher_student import TeacherStudent

ROOT = Path(__file__).resolve().parents[1]
#: Batch and image size per model on a CPU (the synthetic config's own; the others cut down).
CPU_SIZES = {
    "synthetic": None,
    "boq_resnet50": (4, 4, 128, 128),
    "mixvpr_resnet50": (4, 2, 320, 320),  # MixVPR's map size is fixed
    "salad_dinov2": (4, 4, 126, 126),  # 9 x 9 patches: more than SALAD's 64 clusters
    "boq_dinov2": (4, 4, 126, 126),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _build(model: str, stage: str, device: torch.device) -> Any:
    args = ["--config", str(ROOT / f"lightning_configs/modern/{model}/{stage}.yaml"), "--trainer.logger=false"]
    if device.type == "cpu":
        args += ["--trainer.precision=32-true", "--trainer.accelerator=cpu"]
    return cli_main(args, run=False)


def measure(model: str, steps: int, bank_batches: int, device: torch.device, quick: bool = False) -> dict[str, Any]:
    cli = _build(model, "baseline", device)
    student = cli.model.to(device)
    teacher = _build(model, "teacher", device).model.encoder.to(device)
    data = cli.datamodule.hparams
    p, k = data.places_per_batch, data.images_per_place
    h, w = data.image_size
    if (device.type == "cpu" or quick) and CPU_SIZES.get(model) is not None:
        p, k, h, w = CPU_SIZES[model]
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(p, k, 3, h, w, generator=gen).to(device)
    groups = torch.randint(0, 5, (p, k, h, w), generator=gen)
    maps = torch.nn.functional.one_hot(groups, 5).movedim(-1, 2).float().to(device)
    places = torch.arange(p, device=device).repeat_interleave(k)
    pair = TeacherStudent(student.encoder, teacher)
    optimiser = student.configure_optimizers()["optimizer"]
    held = pair.teacher_tuples(maps)  # what a window's cache holds for this batch
    student.train()
    pair.teacher.eval()

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(targets: Any) -> None:
        optimiser.zero_grad(set_to_none=True)
        with autocast:
            if targets is None:
                loss = student.metric_loss(student.encoder.pooled(images.flatten(0, 1)), places)
            else:
                desc, distill = pair.distillation(images, targets() if callable(targets) else targets)
                loss = student.metric_loss(desc.flatten(0, 1).float(), places) + distill.float().mean()
        loss.backward()
        optimiser.step()

    window = bank_batches * p * k
    reps = max(1, window // (p * k))
    utm = np.repeat(np.arange(p * reps, dtype=np.float64), k)[:, None] * np.array([[100.0, 0.0]])
    positives = window_positives(np.repeat(np.arange(p * reps), k), utm, 25.0)

    @torch.no_grad()
    def window_teacher() -> None:
        with autocast:
            for _ in range(reps):
                pair.teacher_tuples(maps)

    @torch.no_grad()
    def window_weighting() -> None:
        was = student.training
        student.eval()
        with autocast:
            desc = torch.cat([student.encoder.pooled(images.flatten(0, 1)).float() for _ in range(reps)])
        student.train(was)
        teacher_desc = held.flatten(0, 1).repeat(reps, 1)
        window_ranks(desc.cpu(), positives, 100)
        window_ranks(teacher_desc.cpu(), positives, 100)

    fns = {
        "baseline": lambda: step(None),
        "distill_cached": lambda: step(held),
        "distill_online": lambda: step(lambda: pair.teacher_tuples(maps)),
        "window_teacher": window_teacher,
        "window_weighting": window_weighting,
    }
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(steps + 1):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if i >= 1:  # warm-up
                times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    base = med["baseline"]
    per_window = {"window_teacher": med["window_teacher"] / reps, "window_weighting": med["window_weighting"] / reps}
    out = {
        "batch": f"{p} x {k} at {h}x{w}",
        "precision": "bf16 autocast" if device.type == "cuda" else "32-true",
        "bank_batches": bank_batches,
        "baseline_step_s": round(base, 4),
        "ratio_distill_cached": round(med["distill_cached"] / base, 3),
        "ratio_distill_online": round(med["distill_online"] / base, 3),
        # amortised over the window's steps: the teacher cache pass, the weighting's passes and ranks
        "ratio_window_teacher_per_step": round(per_window["window_teacher"] / base, 3),
        "ratio_window_weighting_per_step": round(per_window["window_weighting"] / base, 3),
        # without weighting: the cached path pays the window's teacher pass, the online one does not
        "ratio_cached_with_window_teacher": round((med["distill_cached"] + per_window["window_teacher"]) / base, 3),
        # with weighting both need the teacher's descriptors of the window (the online path for ranks only)
        "ratio_cached_with_weighting": round((med["distill_cached"] + sum(per_window.values())) / base, 3),
        "ratio_online_with_weighting": round((med["distill_online"] + sum(per_window.values())) / base, 3),
    }
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.reset_peak_memory_stats()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["synthetic", "boq_resnet50"])
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--bank-batches", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="the cut-down CPU sizes on any device")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="benchmarks/results/place_distill_step.json")
    ns = parser.parse_args()
    if ns.threads:
        torch.set_num_threads(ns.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
    }
    for model in ns.models:
        results[model] = measure(model, ns.steps, ns.bank_batches, device, ns.quick)
        print(model, json.dumps(results[model]), flush=True)
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
