"""SegTeacher: a place encoder whose input is the one-hot structural label map."""

from __future__ import annotations

from collections.abc import Sequence

from structvpr.losses import REFERENCE_MARGIN
from structvpr.models.encoder import ModuleFactory
from structvpr.tasks.base import VPRTask


class SegTeacher(VPRTask):
    """Place recognition from segmentation label maps (StructVPR step 1).

    Reads the ``label`` key of batches: ``(B, G, H, W)`` one-hot group channels.

    Args:
        num_groups: G, channels of the one-hot label maps (5 for the default Cityscapes
            grouping, whose ``dynamic`` group is encoded as zeros).
        trunk: See :class:`~structvpr.tasks.base.VPRTask`; the trunk's first convolution
            takes ``num_groups`` channels.
        aggregator: ``gem``, ``netvlad``, or a callable building an aggregator from the trunk's channels
            (a config ``class_path``; see :class:`~structvpr.models.PlaceEncoder`).
        num_clusters: K of NetVLAD.
        pretrained_path: Local weight file for a timm trunk.
        pca_dim: PCA-whitening size (None for none).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        margin: Triplet margin on unsquared L2 distances (default sqrt(0.1), as the NetVLAD and MSLS references).
        recall_ns: N of the logged Recall@N.
        eval_radius: Correct-match radius in metres.
        kmeans_images: Images used to initialise NetVLAD.
        search_backend: ``auto`` (faiss on CPU, torch on GPU), ``torch`` or ``faiss``.
        trunk_frozen_below: Train only the trunk from this stage on (as the student's); the first
            convolution, which reads the ``G`` label-map channels, stays trainable.

    """

    input_key = "label"

    def __init__(
        self,
        num_groups: int = 5,
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
    ) -> None:
        super().__init__(
            in_chans=num_groups,
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
