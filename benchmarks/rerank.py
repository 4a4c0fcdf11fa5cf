"""Global-only vs re-ranked retrieval on the demo world: Recall@N and ms per query for K in {10, 50, 100}.

python benchmarks/rerank.py --ckpt runs/demo/distill/.../student.ckpt [--out benchmarks/results/rerank.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pytorch_lightning as pl

from structvpr.data import VPRDataModule
from structvpr.tasks import StructVPRStudent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="a StructVPRStudent checkpoint (e.g. the demo's student.ckpt)")
    parser.add_argument("--root", default="data/synthetic-demo")
    parser.add_argument("--image-size", type=int, nargs=2, default=[48, 96])
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--out", default="benchmarks/results/rerank.json")
    ns = parser.parse_args()
    dm = VPRDataModule(root=ns.root, image_size=tuple(ns.image_size), with_labels=False, cache_images=True, synthetic_preset=None)
    results = {}
    for k in ns.ks:
        model = StructVPRStudent.load_from_checkpoint(ns.ckpt, map_location="cpu", rerank_top_k=k)
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, default_root_dir=f"runs/rerank-bench/k{k}"
        )
        trainer.test(model, datamodule=dm, verbose=False)
        results[f"K={k}"] = model.rerank_results
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # No machine path in the results: the checkpoint by name and content hash.
    digest = hashlib.sha256(Path(ns.ckpt).read_bytes()).hexdigest()[:16]
    record = {"checkpoint": Path(ns.ckpt).name, "checkpoint_sha256_16": digest, "results": results}
    out.write_text(json.dumps(record, indent=2))
    lines = ["| K | stage | R@1 | R@5 | R@10 | ms / query |", "|---|---|---|---|---|---|"]
    for k, rows in results.items():
        for stage, r in rows.items():
            lines.append(
                f"| {k[2:]} | {stage} | {100 * r['R@1']:.1f} | {100 * r['R@5']:.1f} | {100 * r['R@10']:.1f} | "
                f"{r['ms_per_query']:.2f} |"
            )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
