"""GPU check of the paper configuration: training throughput, data-loading wait, Recall@N at scale; writes JSON.

On a generated 4:3 world (``demo43``, read at 480x640), VGG16-NetVLAD (K=64) trains for a
fixed number of steps with hard-negative mining, in fp32 and in bf16-mixed precision. For each
precision it reports training images/s (tuples x images per tuple), the bare model's
forward+backward images/s on device-resident inputs of the same shape, and the fraction of step
time spent waiting for the DataLoader. Then Recall@N of 1,000,000 database x 10,000 query
descriptors of 4,096 dimensions is computed on the GPU. ``--quick`` shrinks everything so the
script itself can be checked on a CPU.

    bash benchmarks/gpu_check.sh            # or: python benchmarks/gpu_check.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from structvpr.callbacks import HardNegativeMining
from structvpr.data import VPRDataModule, synthetic
from structvpr.metrics.recall import RecallAtN
from structvpr.tasks import StructVPRStudent


class _StepClock(pl.Callback):
    """Wall time of training steps and of the waits for the next batch between them."""

    def __init__(self, skip: int = 3) -> None:
        self.skip, self.wait, self.step, self.images = skip, 0.0, 0.0, 0
        self._end: float | None = None
        self._start = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._sync(pl_module)
        now = time.perf_counter()
        if self._end is not None and batch_idx >= self.skip:
            self.wait += now - self._end
        self._start = now

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._sync(pl_module)
        self._end = time.perf_counter()
        if batch_idx >= self.skip:
            self.step += self._end - self._start
            self.images += batch["image"].shape[0] * batch["image"].shape[1]

    @staticmethod
    def _sync(pl_module: Any) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()


def _model(quick: bool) -> StructVPRStudent:
    if quick:
        return StructVPRStudent(trunk="simple", aggregator="netvlad", num_clusters=8, kmeans_images=20)
    return StructVPRStudent(trunk="vgg16", aggregator="netvlad", num_clusters=64, kmeans_images=100)


def train_throughput(root: str, precision: str, ns: argparse.Namespace) -> dict[str, float]:
    pl.seed_everything(0)
    size = (48, 64) if ns.quick else (480, 640)
    dm = VPRDataModule(
        root=root,
        image_size=size,
        batch_size=ns.batch_size,
        num_negatives=ns.negatives,
        num_workers=ns.workers,
        cache_images=True,
        synthetic_preset=None,
        with_labels=False,
    )
    clock = _StepClock()
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=ns.steps,
        limit_val_batches=0,
        precision=precision,  # type: ignore[arg-type]
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[HardNegativeMining(), clock],
    )
    model = _model(ns.quick)
    trainer.fit(model, datamodule=dm)
    # The bare model: forward + backward on device-resident tuples of the same shape.
    device = model.device
    x = torch.randn(ns.batch_size, 2 + ns.negatives, 3, *size, device=device)
    opt = torch.optim.Adam(model.encoder.parameters(), lr=1e-5)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision.startswith("bf16"))
    times = []
    for i in range(ns.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast:
            loss = model.triplet_loss(model.encode_tuples(x)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    bare = x.shape[0] * x.shape[1] * len(times) / sum(times)
    train = clock.images / max(clock.step + clock.wait, 1e-9)
    return {
        "train_images_per_s": round(train, 1),
        "bare_images_per_s": round(bare, 1),
        "train_over_bare": round(train / bare, 3),
        "dataloader_wait_fraction": round(clock.wait / max(clock.step + clock.wait, 1e-9), 3),
    }


def recall_at_scale(n_db: int, n_q: int, dim: int) -> dict[str, float]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator(device=device).manual_seed(0)
    metric = RecallAtN((1, 5, 10, 20), 25.0).to(device)
    t0 = time.perf_counter()
    for start in range(0, n_db + n_q, 100_000):
        stop = min(start + 100_000, n_db + n_q)
        idx = torch.arange(start, stop, device=device)
        desc = torch.nn.functional.normalize(torch.randn(len(idx), dim, device=device, generator=gen), dim=1)
        utm = torch.stack([idx.double() * 3.0, torch.zeros_like(idx, dtype=torch.float64)], 1)
        utm[idx >= n_db, 0] = (idx[idx >= n_db] - n_db).double() * 3.0 * (n_db / max(n_q, 1))
        metric.update(desc, idx, idx >= n_db, utm)
    result = metric.compute()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {
        "database": n_db,
        "queries": n_q,
        "dim": dim,
        "seconds": round(seconds, 2),
        "peak_gpu_gib": round(peak, 2),
        "R@1": float(result["R@1"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/synthetic-demo43")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--negatives", type=int, default=10)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script on a CPU")
    parser.add_argument("--out", default="benchmarks/results/gpu_check.json")
    ns = parser.parse_args()
    if not Path(ns.root).exists():
        synthetic.generate(ns.root, "tiny43" if ns.quick else "demo43", seed=0)
    result: dict[str, Any] = {
        "machine": {
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "settings": {
            "image_size": [48, 64] if ns.quick else [480, 640],
            "batch_tuples": ns.batch_size,
            "images_per_tuple": 2 + ns.negatives,
            "steps": ns.steps,
            "quick": ns.quick,
        },
    }
    for precision in ("32-true", "bf16-mixed"):
        result[precision] = train_throughput(ns.root, precision, ns)
        print(precision, result[precision], flush=True)
    n_db, n_q = (20_000, 1_000) if ns.quick else (1_000_000, 10_000)
    result["recall"] = recall_at_scale(n_db, n_q, 4096 if not ns.quick else 256)
    print(result["recall"])
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
