"""StructVPRStudent: the RGB place encoder that alone runs at test time."""

from __future__ import annotations

import inspect
import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from structvpr.losses import REFERENCE_MARGIN
from structvpr.models.encoder import ModuleFactory
from structvpr.tasks.base import VPRTask
from structvpr.utils.io import atomic_path
from structvpr.utils.modes import eval_mode


class StructVPRStudent(VPRTask):
    """RGB place recognition. Trained alone it is the RGB baseline; distilled, StructVPR.

    Use in another project::

        model = StructVPRStudent.load_from_checkpoint("student.ckpt", map_location="cpu", weights_only=True)
        descriptors = model.encode(images)  # (B, D), L2-normalised

    Args:
        trunk: ``simple`` or a timm name (``vgg16`` is the paper's conv5_3 trunk).
        aggregator: ``gem``, ``netvlad``, or a callable building an aggregator from the trunk's channels
            (a config ``class_path``; see :class:`~structvpr.models.PlaceEncoder`).
        num_clusters: K of NetVLAD.
        pretrained_path: Local weight file for a timm trunk (never downloaded).
        pca_dim: PCA-whitening size (None for none).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        margin: Triplet margin on unsquared L2 distances (default sqrt(0.1), as the NetVLAD and MSLS references).
        recall_ns: N of the logged Recall@N.
        eval_radius: Correct-match radius in metres.
        kmeans_images: Images used to initialise NetVLAD.
        search_backend: ``auto`` (faiss on CPU, torch on GPU), ``torch`` or ``faiss``.
        trunk_frozen_below: Train only the trunk from this stage on (``conv5`` for VGG16, as the
            NetVLAD and VG-benchmark references; a module name such as ``layer4`` for other timm trunks).
        rerank_top_k: When set, ``test`` also re-ranks the top-K global candidates by verified
            local matches (:mod:`structvpr.retrieval.rerank`) and reports both stages with their
            per-query latency. Single process only.

    """

    input_key = "image"

    def __init__(
        self,
        trunk: str | ModuleFactory = "simple",
        aggregator: str | ModuleFactory = "gem",
        num_clusters: int = 16,
        pretrained_path: str | None = None,
        pca_dim: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        margin: float = REFERENCE_MARGIN,
        recall_ns: Sequence[int] = (1, 5, 10, 20),
        eval_radius: float = 25.0,
        kmeans_images: int = 200,
        search_backend: str = "auto",
        trunk_frozen_below: str | None = None,
        rerank_top_k: int | None = None,
    ) -> None:
        super().__init__(
            in_chans=3,
            trunk=trunk,
            aggregator=aggregator,
            num_clusters=num_clusters,
            pretrained_path=pretrained_path,
            pca_dim=pca_dim,
            lr=lr,
            weight_decay=weight_decay,
            margin=margin,
            recall_ns=recall_ns,
            eval_radius=eval_radius,
            kmeans_images=kmeans_images,
            search_backend=search_backend,
            trunk_frozen_below=trunk_frozen_below,
        )
        if rerank_top_k is not None and rerank_top_k < 1:
            raise ValueError(f"rerank_top_k must be >= 1 or None, got {rerank_top_k}")
        self.rerank_top_k = rerank_top_k
        self._rerank_state: dict[str, Any] | None = None
        self.rerank_results: dict[str, dict[str, float]] = {}
        #: What the student must be fed, recorded in its checkpoints (see :meth:`input_spec`).
        self.saved_input_spec: dict[str, Any] | None = None

    def input_spec(self) -> dict[str, Any]:
        """Input size, normalisation, descriptor size, PCA state and taxonomy of this student.

        Taken from the datamodule it is trained with (else from its checkpoint); written into
        every checkpoint under ``structvpr_input`` and into exported ONNX / TorchScript files.
        """
        from structvpr.data.datasets import IMAGENET_MEAN, IMAGENET_STD

        spec = dict(self.saved_input_spec or {})
        dm = self.datamodule if self._trainer is not None else None
        if dm is not None and hasattr(dm, "image_size"):
            spec["image_size"] = [int(v) for v in getattr(dm, "eval_image_size", dm.image_size)]  # what tests feed
            spec["taxonomy"] = dict(getattr(dm, "hparams", {})).get("grouping")
        pca = self.encoder.pca
        pca_state = None if pca is None else {"in": pca.in_dim, "out": pca.out_dim, "fitted": bool(pca.fitted)}
        spec.update(
            {
                "mean": list(IMAGENET_MEAN),
                "std": list(IMAGENET_STD),
                "channels": "RGB",
                "descriptor_dim": self.encoder.descriptor_dim,
                "pca": pca_state,
            }
        )
        spec.setdefault("image_size", None)
        spec.setdefault("taxonomy", None)
        return spec

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["structvpr_input"] = self.input_spec()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.saved_input_spec = checkpoint.get("structvpr_input")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        if not self.rerank_top_k:
            return super().test_step(batch, batch_idx)
        from structvpr.retrieval.rerank import LocalFeatureStore, local_features

        fmap = self.encoder.features(batch["image"])
        desc = self.encoder.describe(fmap)
        self.test_recall.update(desc, batch["index"], batch["is_query"], batch["utm"])
        if self._rerank_state is None:
            if self.trainer.world_size > 1:
                raise RuntimeError("re-ranking runs in one process: test with --trainer.devices 1")
            n = len(self.datamodule.test_dataset)
            fh, fw = fmap.shape[-2:]
            store = LocalFeatureStore.create(
                self.report_dir() / "local_features.npy", n, (fh, fw), fmap.shape[1], tuple(batch["image"].shape[-2:])
            )
            self._rerank_state = {"store": store, "desc": [], "index": []}
        state = self._rerank_state
        state["store"].write(batch["index"], local_features(fmap))
        state["desc"].append(desc.cpu())
        state["index"].append(batch["index"].cpu())
        return {"descriptor": desc}

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self._rerank_state is not None:
            self.rerank_results = self._two_stage_report(self._rerank_state)
            self._rerank_state = None

    def _two_stage_report(self, state: dict[str, Any]) -> dict[str, dict[str, float]]:
        from structvpr.metrics.recall import hit_matrix
        from structvpr.reports import recall_table
        from structvpr.retrieval.rerank import rerank
        from structvpr.retrieval.search import first_per_group, group_codes, knn

        store = state["store"]
        store.flush()
        dataset = self.datamodule.test_dataset
        desc = torch.cat(state["desc"])[torch.argsort(torch.cat(state["index"]))]
        n_db, utm = dataset.num_database, dataset.utm
        start = time.perf_counter()
        candidates = knn(desc[n_db:], desc[:n_db], self.rerank_top_k)  # type: ignore[arg-type]
        global_ms = (time.perf_counter() - start) * 1000 / max(1, len(candidates))
        start = time.perf_counter()
        # Database rows come first in the store, so database ids index it directly.
        reranked, _ = rerank([store[n_db + q] for q in range(len(candidates))], store, candidates)
        rerank_ms = (time.perf_counter() - start) * 1000 / max(1, len(candidates))
        metric = self.test_recall
        groups = None if metric.database_groups is None else group_codes(metric.database_groups)
        out = {}
        for name, order, ms in (("global", candidates, global_ms), ("re-ranked", reranked, global_ms + rerank_ms)):
            if groups is not None:  # one hit per panorama: the N-th distinct panorama of the list
                order = torch.from_numpy(first_per_group(order.numpy(), groups, order.shape[1]))
            hit, valid = hit_matrix(order, **metric.match_rule(utm[n_db:], utm[:n_db]))
            # N beyond K is not defined for a top-K list.
            ns = [n for n in self.test_recall.ns if n <= order.shape[1]]
            row = {f"R@{n}": float(hit[:, :n].any(1)[valid].float().mean()) for n in ns}
            out[name] = {
                **row,
                "ms_per_query": round(ms, 3),
                "num_queries": int(valid.sum()),
                "num_excluded": int((~valid).sum()),
            }
        if self.trainer.is_global_zero:
            table = recall_table({f"{k} (top {self.rerank_top_k})": v for k, v in out.items()})
            latency = ", ".join(f"{k} {v['ms_per_query']:.2f} ms/query" for k, v in out.items())
            (self.report_dir() / "rerank_results.json").write_text(json.dumps(out, indent=2))
            print(f"\n{table}\nlatency (search + re-ranking, after encoding): {latency}")
        return out

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
        size = (self.saved_input_spec or {}).get("image_size")
        if size is not None and list(images.shape[-2:]) != list(size):
            warnings.warn(
                f"images are {tuple(images.shape[-2:])} but this student was trained on {tuple(size)}: "
                "resize them as in training (structvpr.data.datasets.joint_transform)",
                stacklevel=2,
            )
        if float(images.mean()) > 20:  # normalised images have values around 0; raw ones 0..255
            warnings.warn("images look unnormalised (mean > 20): give ImageNet-normalised float RGB", stacklevel=2)
        with eval_mode(self):
            return torch.cat([self(chunk.to(self.device)) for chunk in images.split(batch_size)])

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
                **self.student_hparams(),
                "_class_path": "structvpr.tasks.StructVPRStudent",
            },
            "pytorch-lightning_version": pl.__version__,
            "structvpr_input": self.input_spec(),
        }
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
        return path
