"""Export a trained student to ONNX or TorchScript: ``structvpr export --ckpt student.ckpt --format onnx``."""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from structvpr.models.encoder import PlaceEncoder
from structvpr.utils.io import atomic_path


class DescriptorNet(nn.Module):
    """A student's encoder as one plain graph: ``(B, 3, H, W)`` normalised RGB -> ``(B, D)``.

    The PCA-whitening state is resolved when the module is built (applied only if fitted), so
    the graph has no data-dependent branch and exports with a dynamic batch size.
    """

    pca_mean: torch.Tensor
    pca_projection: torch.Tensor

    def __init__(self, encoder: PlaceEncoder) -> None:
        super().__init__()
        self.trunk, self.aggregator = encoder.trunk, encoder.aggregator
        pca = encoder.pca
        self.whiten = pca is not None and bool(pca.fitted)
        if pca is not None and self.whiten:
            self.register_buffer("pca_mean", pca.mean.detach().clone())
            self.register_buffer("pca_projection", pca.projection.detach().clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = F.normalize(self.aggregator(self.trunk(images)), dim=-1)
        if self.whiten:
            out = F.normalize((out - self.pca_mean) @ self.pca_projection.T, dim=-1)
        return out


def export(
    ckpt: str | Path, out: str | Path, fmt: str = "onnx", image_size: Sequence[int] | None = None, opset: int = 18
) -> Path:
    """Write a student checkpoint as ONNX (``fmt="onnx"``) or TorchScript (``"torchscript"``).

    The file takes a dynamic batch of ``(B, 3, H, W)`` ImageNet-normalised RGB and returns
    ``(B, D)`` L2-normalised descriptors; it carries the checkpoint's input spec (image size,
    mean, std, descriptor size, PCA state, taxonomy) as ONNX metadata ``structvpr_input`` or a
    TorchScript extra file ``structvpr_input.json``. Written under a temporary name, then renamed.

    Args:
        ckpt: A :class:`~structvpr.StructVPRStudent` checkpoint (an exported ``student.ckpt``).
        out: Output file.
        fmt: ``onnx`` or ``torchscript``.
        image_size: ``(H, W)`` of the example input (default: the checkpoint's training size).
        opset: ONNX opset.
    """
    from structvpr.tasks.student import StructVPRStudent

    if fmt not in ("onnx", "torchscript"):
        raise ValueError(f"format must be 'onnx' or 'torchscript', got {fmt!r}")
    student = StructVPRStudent.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    spec: dict[str, Any] = student.input_spec()
    trained = spec.get("image_size")
    size = list(image_size) if image_size is not None else trained
    if image_size is not None and trained is not None and [int(v) for v in image_size] != [int(v) for v in trained]:
        warnings.warn(
            f"{ckpt} was trained on {trained[0]}x{trained[1]} images; exporting with an example input of "
            f"{image_size[0]}x{image_size[1]} as asked (the file records that size)",
            stacklevel=2,
        )
    if size is None:
        raise ValueError(f"{ckpt}: records no input size; give image_size (H, W)")
    spec["image_size"] = [int(v) for v in size]
    net = DescriptorNet(student.encoder).eval()
    example = torch.randn(2, 3, *spec["image_size"])
    out = Path(out)
    with torch.no_grad(), atomic_path(out) as tmp:
        if fmt == "torchscript":
            traced = torch.jit.trace(net, example)
            torch.jit.save(traced, str(tmp), _extra_files={"structvpr_input.json": json.dumps(spec)})
        else:
            import onnx

            program = torch.onnx.export(
                net,
                (example,),
                input_names=["images"],
                output_names=["descriptors"],
                dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                opset_version=opset,
                dynamo=True,
            )
            assert program is not None
            model = program.model_proto
            entry = model.metadata_props.add()
            entry.key, entry.value = "structvpr_input", json.dumps(spec)
            onnx.save(model, str(tmp))
    return out


def export_main(args: Sequence[str]) -> Path:
    """``structvpr export``."""
    parser = argparse.ArgumentParser(prog="structvpr export", description=export.__doc__.splitlines()[0])  # type: ignore[union-attr]
    parser.add_argument("--ckpt", required=True, help="a StructVPRStudent checkpoint (e.g. the exported student.ckpt)")
    parser.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    parser.add_argument("--out", help="output file (default: next to the checkpoint, .onnx or .pt)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="default: the training size")
    ns = parser.parse_args(list(args))
    out = ns.out or str(Path(ns.ckpt).with_suffix(".onnx" if ns.format == "onnx" else ".pt"))
    path = export(ns.ckpt, out, ns.format, ns.image_size)
    print(f"wrote {path}")
    return path
