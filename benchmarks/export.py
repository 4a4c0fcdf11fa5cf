"""ONNX export round trip: descriptor difference and ms per image, PyTorch vs ONNX Runtime on CPU; writes JSON.

For a small student (simple CNN + GeM) and the paper's (VGG16 + NetVLAD K=64 + PCA to 4,096)
at 480x640, random weights: export with ``structvpr.export.export``, then time both on the same
batch, interleaved, best of a few repeats.

    python benchmarks/export.py [--out benchmarks/results/export.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from structvpr.export import export
from structvpr.tasks import StructVPRStudent


def case(name: str, model: StructVPRStudent, size: tuple[int, int], batch: int, repeats: int) -> dict:
    model.eval()
    model.saved_input_spec = {"image_size": list(size)}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = model.export_student(Path(tmp) / "student.ckpt")
        onnx_file = export(ckpt, Path(tmp) / "student.onnx", "onnx")
        session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        images = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))
        torch_s, ort_s = [], []
        with torch.no_grad():
            for _ in range(repeats):
                t0 = time.perf_counter()
                ref = model(images)
                torch_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                got = session.run(["descriptors"], {"images": images.numpy()})[0]
                ort_s.append(time.perf_counter() - t0)
    return {
        "model": name,
        "image_size": list(size),
        "batch": batch,
        "descriptor_dim": int(got.shape[1]),
        "max_abs_diff": float(np.abs(got - ref.numpy()).max()),
        "ms_per_image_pytorch": round(min(torch_s) * 1000 / batch, 1),
        "ms_per_image_onnxruntime": round(min(ort_s) * 1000 / batch, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/export.json")
    parser.add_argument("--quick", action="store_true")
    ns = parser.parse_args()
    torch.manual_seed(0)
    small = StructVPRStudent()
    rows = [case("simple + GeM", small, (480, 640), 8, 3)]
    if not ns.quick:
        paper = StructVPRStudent(trunk="vgg16", aggregator="netvlad", num_clusters=64, pca_dim=4096)
        paper.encoder.aggregator.init_clusters(torch.randn(2000, 512))
        paper.encoder.pca.fit(torch.nn.functional.normalize(torch.randn(5000, 64 * 512), dim=1))
        rows.append(case("VGG16 + NetVLAD + PCA-4096", paper, (480, 640), 2, 2))
    result = {
        "machine": {
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
        },
        "rows": rows,
    }
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
