"""Cost of the up-front decode check (structvpr.data.verify) at MSLS size: first run and cached rerun.

Writes benchmarks/results/verify_files.json. The images are hard links of one 640x480 JPEG of
street-photo size (MSLS photos are 640x480 JPEGs), so the disk holds one file per 50,000 images; every link is
decoded in full on the first run as if it were its own photo. Reading from a cold disk would add
the time to read the bytes (about 100 KB an image); the decode is what this measures.

    python benchmarks/verify_files.py --images 100000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_tree(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    # smooth gradients plus noise: compresses like a photo (about 60-100 KB at quality 90)
    y, x = np.mgrid[0:480, 0:640]
    base = np.stack([x / 640 * 255, y / 480 * 255, (x + y) / 1120 * 255], -1)
    image = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    source = folder / "source.jpg"
    Image.fromarray(image).save(source, quality=90)
    paths = []
    for i in range(count):
        if i % 50_000 == 0 and i:  # a file takes at most about 65,000 links: start from a fresh copy
            source = shutil.copy(source, folder / f"source{i // 50_000}.jpg")
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        path = sub / f"{i:06d}.jpg"
        os.link(source, path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=None, help="default: the CPUs this process may use")
    parser.add_argument("--out", default="benchmarks/results/verify_files.json")
    ns = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="structvpr-verify-"))
    os.environ["STRUCTVPR_CACHE"] = str(work / "cache")
    from structvpr.data.verify import verify_files

    try:
        start = time.perf_counter()
        paths = make_tree(work / "images", ns.images)
        made = time.perf_counter() - start
        timings = {}
        for run in ("first", "second"):
            start = time.perf_counter()
            bad = verify_files(paths, workers=ns.workers, progress=False)
            timings[run] = round(time.perf_counter() - start, 2)
            assert bad == [], bad[:3]
        size = (work / "images" / "source.jpg").stat().st_size
    finally:
        shutil.rmtree(work, ignore_errors=True)
    workers = ns.workers or min(16, len(os.sched_getaffinity(0)))
    out = {
        "images": ns.images,
        "image": f"640x480 JPEG, {size // 1024} KB",
        "workers": workers,
        "first_run_seconds": timings["first"],
        "second_run_seconds": timings["second"],
        "first_run_ms_per_image": round(1000 * timings["first"] / ns.images, 3),
        "second_run_ms_per_image": round(1000 * timings["second"] / ns.images, 4),
        "tree_seconds": round(made, 1),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
    }
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
