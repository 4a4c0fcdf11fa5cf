"""StructVPRStudent: the RGB place encoder that alone runs at test time."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from structvpr.tasks.base import VPRTask


class StructVPRStudent(VPRTask):
    """RGB place recognition. Trained alone it is the RGB baseline; distilled, StructVPR.

    Use in another project::

        model = StructVPRStudent.load_from_checkpoint("student.ckpt", map_location="cpu")
        descriptors = model.encode(images)  # (B, D), L2-normalised

    Args:
        trunk: ``simple`` or a timm name (``vgg16`` is the paper's conv5_3 trunk).
        aggregator: ``gem`` or ``netvlad``.
        num_clusters: K of NetVLAD.
        pretrained_path: Local weight file for a timm trunk (never downloaded).
        pca_dim: PCA-whitening size (None for none).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        margin: Triplet margin.
        recall_ns: N of the logged Recall@N.
        eval_radius: Correct-match radius in metres.
        kmeans_images: Images used to initialise NetVLAD.
        search_backend: ``torch`` or ``faiss``.

    """

    input_key = "image"

    def __init__(self, trunk: str = "simple", aggregator: str = "gem", num_clusters: int = 16,
                 pretrained_path: str | None = None, pca_dim: int | None = None, lr: float = 1e-3,
                 weight_decay: float = 1e-4, margin: float = 0.1,
                 recall_ns: Sequence[int] = (1, 5, 10, 20), eval_radius: float = 25.0,
                 kmeans_images: int = 200, search_backend: str = "torch") -> None:  # fmt: skip
        super().__init__(3, trunk, aggregator, num_clusters, pretrained_path, pca_dim, lr,
                         weight_decay, margin, recall_ns, eval_radius, kmeans_images, search_backend)  # fmt: skip

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Descriptors of normalised RGB images, in eval mode.

        Args:
            images: ``(B, 3, H, W)`` float, normalised with the ImageNet mean and std (as
                :func:`structvpr.data.datasets.joint_transform` does).
            batch_size: Images per forward pass.

        Returns:
            ``(B, D)`` L2-normalised descriptors on the model's device.

        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        was_training = self.training
        self.eval()
        out = [self(chunk.to(self.device)) for chunk in images.split(batch_size)]
        self.train(was_training)
        return torch.cat(out)

    def student_hparams(self) -> dict[str, Any]:
        """The hyper-parameters that rebuild this model as a plain :class:`StructVPRStudent`."""
        names = inspect.signature(StructVPRStudent.__init__).parameters
        return {k: v for k, v in self.hparams.items() if k in names}

    def export_student(self, path: str | Path) -> Path:
        """Save a checkpoint that :meth:`StructVPRStudent.load_from_checkpoint` reads.

        Only the RGB encoder and its hyper-parameters are written: no teacher, no optimiser.
        The file is written under a temporary name and renamed, so it is never half-written.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {f"encoder.{k}": v.detach().cpu() for k, v in self.encoder.state_dict().items()}
        checkpoint = {
            "state_dict": state,
            # _class_path lets `structvpr test --ckpt_path` rebuild the right class.
            StructVPRStudent.CHECKPOINT_HYPER_PARAMS_KEY: {
                **self.student_hparams(), "_class_path": "structvpr.tasks.StructVPRStudent"},
            "pytorch-lightning_version": pl.__version__,
        }
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(checkpoint, tmp)
        tmp.replace(path)
        return path
