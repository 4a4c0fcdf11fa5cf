"""One training step of each modern config at its published size, against the bare model's forward and backward.

For ``lightning_configs/modern/{mixvpr_resnet50,salad_dinov2,boq_resnet50,boq_dinov2}/baseline.yaml`` the model
is built from the config (random weights), a batch of P x K random images at the training size is
put on the device, and two things are timed alternately (median of ``--steps``, after warm-up):
the recipe's step (encode, multi-similarity miner and loss, backward, optimiser step, the
config's precision) and the bare model's forward and backward (the sum of the descriptors as
loss, no miner, no optimiser). Their ratio is the recipe's overhead. Writes JSON.
``--quick`` uses P=4 and a small image size so the script can be checked on a CPU.

    python benchmarks/modern_step.py [--quick] [--out benchmarks/results/modern_step.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from structvpr.lightning_cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("mixvpr_resnet50", "salad_dinov2", "boq_resnet50", "boq_dinov2")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(config: str, steps: int, quick: bool, device: torch.device) -> dict[str, Any]:
    overrides = ["--trainer.logger=false", "--trainer.precision=32-true"] if device.type == "cpu" else ["--trainer.logger=false"]
    cli = cli_main(["--config", str(ROOT / f"lightning_configs/modern/{config}/baseline.yaml"), *overrides], run=False)
    model, data = cli.model.to(device), cli.datamodule.hparams
    p, k = (4, 4) if quick else (data.places_per_batch, data.images_per_place)
    h, w = data.image_size
    if quick and "mixvpr" not in config:  # MixVPR's map size is fixed: it keeps 320
        h = w = 126 if "dinov2" in config else 128  # 9 x 9 patches: SALAD needs more than its 64 clusters
    images = torch.rand(p * k, 3, h, w, device=device)
    places = torch.arange(p, device=device).repeat_interleave(k)
    optimiser = model.configure_optimizers()["optimizer"]
    amp = device.type == "cuda" and "16" in str(cli.trainer.precision)
    autocast = torch.autocast(device.type, dtype=torch.float16, enabled=amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    model.train()

    def recipe() -> None:
        optimiser.zero_grad(set_to_none=True)
        with autocast:
            loss = model.metric_loss(model.encoder.pooled(images), places)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()

    def bare() -> None:
        optimiser.zero_grad(set_to_none=True)
        with autocast:
            loss = model.encoder.pooled(images).float().sum()
        loss.backward()

    times: dict[str, list[float]] = {"recipe": [], "bare": []}
    for i in range(steps + 2):
        for name, fn in (("recipe", recipe), ("bare", bare)):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if i >= 2:  # warm-up
                times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    out = {
        "batch": f"{p} x {k} at {h}x{w}",
        "precision": "16-mixed" if amp else "32-true",
        "recipe_step_s": round(med["recipe"], 4),
        "bare_forward_backward_s": round(med["bare"], 4),
        "ratio": round(med["recipe"] / med["bare"], 3),
        "images_per_s": round(p * k / med["recipe"], 1),
    }
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.reset_peak_memory_stats()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/modern_step.json")
    ns = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "quick": ns.quick}
    for config in CONFIGS:
        results[config] = measure(config, ns.steps, ns.quick, device)
        print(config, json.dumps(results[config]), flush=True)
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
