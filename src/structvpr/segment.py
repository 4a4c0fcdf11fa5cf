"""``structvpr segment``: write label maps for a dataset with a local segmentation network.

Label maps are written, in Cityscapes train ids, to ``<root>/labels/<path under images/ (VG
layout) or under root (native layouts)>`` with a ``.png`` suffix, where :mod:`structvpr.data.vg` and :mod:`structvpr.data.formats`
look for them. Finished maps are skipped (resume), each map is written to a temporary name
and renamed (no partial file after an interruption), and unreadable images are reported at
the end without stopping the run.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from structvpr.data.datasets import IMAGENET_MEAN, IMAGENET_STD, ImageReadError, load_rgb
from structvpr.data.labels import CITYSCAPES_CLASSES, IGNORE_ID
from structvpr.data.verify import verify_files
from structvpr.data.vg import label_map_path, list_images
from structvpr.utils.io import atomic_path

#: ADE20K (150 classes, 0-based) to Cityscapes train ids; unlisted classes become ignore (255).
ADE20K_TO_CITYSCAPES = {
    0: 3,
    1: 2,
    2: 10,
    3: 0,
    4: 8,
    6: 0,
    9: 8,
    11: 1,
    12: 11,
    13: 9,
    16: 2,
    17: 8,
    20: 13,
    25: 2,
    29: 9,
    32: 4,
    38: 4,
    43: 7,
    46: 9,
    48: 2,
    52: 0,
    61: 2,
    68: 8,
    72: 8,
    80: 15,
    83: 14,
    87: 5,
    90: 13,
    93: 5,
    102: 14,
    116: 17,
    127: 18,
    136: 6,
}
TAXONOMIES = ("cityscapes", "ade20k")


def taxonomy_table(taxonomy: str, num_classes: int) -> np.ndarray:
    """(num_classes,) uint8 table from the model's class ids to Cityscapes train ids."""
    if taxonomy == "cityscapes":
        if num_classes != len(CITYSCAPES_CLASSES):
            raise ValueError(f"a Cityscapes model must predict 19 classes, this one predicts {num_classes}")
        return np.arange(num_classes, dtype=np.uint8)
    if taxonomy == "ade20k":
        if num_classes != 150:
            raise ValueError(f"an ADE20K model must predict 150 classes, this one predicts {num_classes}")
        table = np.full(150, IGNORE_ID, dtype=np.uint8)
        for src, dst in ADE20K_TO_CITYSCAPES.items():
            table[src] = dst
        return table
    raise ValueError(f"taxonomy must be one of {TAXONOMIES}, got {taxonomy!r}")


class TorchvisionSegmenter(torch.nn.Module):
    """A torchvision segmentation model (``deeplabv3_resnet50``, ``fcn_resnet50``, ``lraspp_mobilenet_v3_large``...)
    built without downloads, with weights from a local state-dict file.

    Args:
        name: Model builder in ``torchvision.models.segmentation``.
        num_classes: Output classes of the checkpoint (19 Cityscapes, 150 ADE20K).
        weights_path: Local ``state_dict`` file, or None for random weights (tests only).

    """  # noqa: D205

    def __init__(self, name: str, num_classes: int, weights_path: str | None) -> None:
        super().__init__()
        from torchvision.models import segmentation

        builder = getattr(segmentation, name, None)
        if builder is None or not callable(builder):
            raise ValueError(f"torchvision.models.segmentation has no model {name!r}")
        kwargs = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
        if "deeplab" in name or "fcn" in name:
            kwargs["aux_loss"] = False
        self.model = builder(**kwargs)
        if weights_path is not None:
            if not Path(weights_path).is_file():
                raise FileNotFoundError(f"{weights_path}: segmentation weight file does not exist")
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
            self.model.load_state_dict(state)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


class SegformerSegmenter(torch.nn.Module):
    """A HuggingFace SegFormer checkpoint folder on local disk (needs ``transformers``)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        try:
            from transformers import SegformerForSemanticSegmentation
        except ImportError as err:
            raise ImportError("SegFormer checkpoints need the transformers package: pip install transformers") from err
        if not Path(path).is_dir():
            raise FileNotFoundError(f"{path}: SegFormer checkpoint folder does not exist")
        self.model = SegformerForSemanticSegmentation.from_pretrained(path, local_files_only=True)
        self.num_classes = int(self.model.config.num_labels or 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def _write_png(label: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(label).save(tmp, format="PNG")


def dataset_images(root: str | Path, split: str | None = None, options: dict[str, Any] | None = None) -> list[Path]:
    """The images of a dataset that need label maps.

    Args:
        root: Dataset root.
        split: A named split of :mod:`structvpr.data.benchmarks` (``pitts30k_train``,
            ``msls_train``, ...): exactly its database and query images. Without it, every
            image under ``<root>/images`` (VG layout), or under ``root`` when there is no
            ``images/`` folder (native layouts), ``labels/`` excepted.
        options: Keyword options of the named split.
    """
    root = Path(root)
    if split is not None:
        from structvpr.data.benchmarks import load_benchmark

        manifest = load_benchmark(split, root, **(options or {}))
        return sorted({r.path for r in manifest.database + manifest.queries})
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset root does not exist")
    folder = root / "images" if (root / "images").is_dir() else root
    labels = root / "labels"
    images = [p for p in list_images(folder) if labels not in p.parents]
    if not images:
        raise FileNotFoundError(f"{folder}: holds no .jpg/.jpeg/.png images")
    return images


@torch.no_grad()
def segment_dataset(
    root: str | Path,
    model: torch.nn.Module,
    taxonomy: str,
    device: str = "cpu",
    progress: bool = True,
    images: Sequence[Path] | None = None,
) -> dict[str, list[str]]:
    """Write a label map for every image of the dataset that lacks one.

    Maps go where the datamodule looks for them (:func:`structvpr.data.vg.label_map_path`):
    ``<root>/labels/<image path under root/images or root>.png``.

    Args:
        root: Dataset root.
        model: Segmenter with ``num_classes``, returning ``(1, K, h, w)`` logits.
        taxonomy: The model's classes, ``cityscapes`` or ``ade20k``.
        device: Where the model runs.
        progress: Show a progress bar and print a summary.
        images: The images to segment (default: :func:`dataset_images` of ``root``).

    Returns:
        ``{"written": [...], "skipped": [...], "failed": ["path: reason", ...]}``.

    """
    from tqdm import tqdm

    root = Path(root)
    table = torch.from_numpy(taxonomy_table(taxonomy, int(model.num_classes)))  # type: ignore[arg-type]
    images = dataset_images(root) if images is None else list(images)
    report: dict[str, list[str]] = {"written": [], "skipped": [], "redone": [], "failed": [], "cleaned": []}
    # Temporary files of a run that was killed while writing (atomic_path's ".<stem>.<pid>.tmp.png").
    for stale in sorted((root / "labels").rglob(".*.tmp.png")) if (root / "labels").is_dir() else []:
        stale.unlink(missing_ok=True)
        report["cleaned"].append(str(stale))
    targets = [(path, label_map_path(path, root)) for path in images]
    present = [(path, target) for path, target in targets if target.is_file()]
    # A map already there is kept only if it decodes in full and has its image's size.
    broken = {p for p, _ in verify_files([t for _, t in present], "label", progress=progress, what="existing label maps")}
    todo = []
    for path, target in targets:
        if not target.is_file():
            todo.append((path, target))
        elif str(target) in broken or _size(target) != _size(path):
            report["redone"].append(str(target))
            todo.append((path, target))
        else:
            report["skipped"].append(str(path))
    model = model.to(device).eval()
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    # One image at a time: real datasets mix resolutions, and maps keep each image's size.
    for path, target in tqdm(todo, desc="segment", unit="image", disable=not progress):
        try:
            rgb = load_rgb(path)
        except ImageReadError as err:
            report["failed"].append(str(err))
            continue
        x = (torch.from_numpy(rgb).permute(2, 0, 1).float().to(device) / 255 - mean) / std
        logits = F.interpolate(model(x[None]), size=rgb.shape[:2], mode="bilinear", align_corners=False)
        _write_png(table[logits.argmax(1)[0].cpu()].numpy(), target)
        report["written"].append(str(target))
    if progress:
        print(
            f"segment: {len(report['written'])} written ({len(report['redone'])} of them redone: a map that did "
            f"not decode or had another size), {len(report['skipped'])} already there, "
            f"{len(report['cleaned'])} stale temporary files removed, {len(report['failed'])} unreadable"
        )
        for line in report["failed"]:
            print(f"  unreadable: {line}")
    return report


def _size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from the file's header (None when it cannot be read)."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # PIL raises several types for damaged files
        return None


def segment_main(args: Sequence[str]) -> dict[str, list[str]]:
    """``structvpr segment``."""
    parser = argparse.ArgumentParser(prog="structvpr segment", description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="dataset root holding images/")
    parser.add_argument(
        "--model", required=True, help="torchvision:<builder> (e.g. torchvision:deeplabv3_resnet50) or segformer:<local folder>"
    )
    parser.add_argument("--weights", default=None, help="local state-dict file for a torchvision model")
    parser.add_argument("--taxonomy", default="cityscapes", choices=TAXONOMIES)
    parser.add_argument("--num-classes", type=int, default=None, help="default: 19 (cityscapes) or 150 (ade20k)")
    parser.add_argument(
        "--split", default=None, help="a named split (pitts30k_train, msls_train, ...): segment exactly its images"
    )
    parser.add_argument(
        "--split-options",
        default=None,
        type=json.loads,
        help='JSON keyword options of the split, e.g. \'{"cities": ["london"]}\'',
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ns = parser.parse_args(list(args))
    kind, _, name = ns.model.partition(":")
    if kind == "torchvision":
        num_classes = ns.num_classes or (19 if ns.taxonomy == "cityscapes" else 150)
        model: torch.nn.Module = TorchvisionSegmenter(name, num_classes, ns.weights)
    elif kind == "segformer":
        model = SegformerSegmenter(name)
    else:
        parser.error(f"--model must start with torchvision: or segformer:, got {ns.model!r}")
    images = dataset_images(ns.root, ns.split, ns.split_options)
    report = segment_dataset(ns.root, model, ns.taxonomy, ns.device, images=images)
    if report["failed"]:  # every readable image has its map; the command still fails, naming the rest
        raise ImageReadError(
            f"{len(report['failed'])} image(s) could not be read, so they have no label map:\n  " + "\n  ".join(report["failed"])
        )
    return report
