"""Second-stage re-ranking: RANSAC-verified mutual nearest neighbours of the student's own local features.

Local features are the L2-normalised columns of the encoder's last feature map (no extra
network), with the pixel centre of each cell as its keypoint. Database features are written
once to a float16 memory-mapped file, so a large database need not fit in RAM. A candidate's
score is the number of mutual-nearest-neighbour matches that OpenCV's RANSAC homography
keeps as inliers; candidates are re-ordered by score, ties kept in global order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def local_features(fmap: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` feature maps to ``(B, h * w, C)`` L2-normalised local descriptors."""
    return F.normalize(fmap.flatten(2).transpose(1, 2), dim=-1)


def keypoints(h: int, w: int, image_size: tuple[int, int]) -> np.ndarray:
    """``(h * w, 2)`` float32 pixel centres (x, y) of the cells of an ``h x w`` map over the image."""
    sy, sx = image_size[0] / h, image_size[1] / w
    ys, xs = np.meshgrid((np.arange(h) + 0.5) * sy, (np.arange(w) + 0.5) * sx, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)


class LocalFeatureStore:
    """Float16 local features of N images in a memory-mapped file, ``(N, h * w, C)``.

    Create with :meth:`create`, fill with :meth:`write`, reopen read-only with :meth:`open`.
    A ``<file>.json`` beside the data records the shape and the image size.
    """

    def __init__(self, path: Path, array: np.memmap, image_size: tuple[int, int], grid: tuple[int, int]) -> None:
        self.path, self.array, self.image_size, self.grid = path, array, image_size, grid

    @classmethod
    def create(
        cls, path: str | Path, num_images: int, grid: tuple[int, int], channels: int, image_size: tuple[int, int]
    ) -> LocalFeatureStore:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        shape = (num_images, grid[0] * grid[1], channels)
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
        meta = {"shape": list(shape), "grid": list(grid), "image_size": list(image_size)}
        path.with_suffix(".json").write_text(json.dumps(meta))
        return cls(path, array, tuple(image_size), tuple(grid))  # type: ignore[arg-type]

    @classmethod
    def open(cls, path: str | Path) -> LocalFeatureStore:
        path = Path(path)
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            raise FileNotFoundError(f"{path}: local feature store (and its .json) does not exist")
        meta = json.loads(meta_path.read_text())
        array = np.load(path, mmap_mode="r")
        if list(array.shape) != meta["shape"]:
            raise ValueError(f"{path}: holds {array.shape}, its .json says {meta['shape']}")
        return cls(path, array, tuple(meta["image_size"]), tuple(meta["grid"]))

    def write(self, indices: torch.Tensor, feats: torch.Tensor) -> None:
        """Store ``(B, h * w, C)`` features at rows ``indices``."""
        self.array[indices.cpu().numpy()] = feats.detach().cpu().to(torch.float16).numpy()

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.array[i], dtype=np.float32))

    def flush(self) -> None:
        self.array.flush()


def mutual_nearest_neighbours(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(n, C)`` and ``(m, C)`` normalised features to ``(k, 2)`` index pairs that pick each other."""
    sim = a @ b.T
    ab, ba = sim.argmax(1), sim.argmax(0)
    i = torch.arange(a.shape[0])
    keep = ba[ab] == i
    return torch.stack([i[keep], ab[keep]], dim=1)


def verified_matches(kp_a: np.ndarray, kp_b: np.ndarray, pairs: torch.Tensor, threshold: float = 4.0) -> int:
    """RANSAC (homography, OpenCV) inliers among matched keypoints; 0 with fewer than 4 matches."""
    import cv2

    if len(pairs) < 4:
        return 0
    src = kp_a[pairs[:, 0].numpy()].reshape(-1, 1, 2)
    dst = kp_b[pairs[:, 1].numpy()].reshape(-1, 1, 2)
    _, mask = cv2.findHomography(src, dst, cv2.RANSAC, threshold, maxIters=500, confidence=0.995)
    return 0 if mask is None else int(mask.sum())


def rerank(
    query_feats: list[torch.Tensor] | torch.Tensor, database: LocalFeatureStore, candidates: torch.Tensor, threshold: float = 4.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-order each query's global candidates by verified local matches.

    Args:
        query_feats: Per query, ``(h * w, C)`` local features (same grid as the database).
        database: The database's stored local features.
        candidates: ``(Q, K)`` database indices from global retrieval, best first.
        threshold: RANSAC reprojection threshold in pixels.

    Returns:
        ``(Q, K)`` re-ordered indices and ``(Q, K)`` inlier counts of the original order.

    """
    kp = keypoints(*database.grid, database.image_size)
    scores = torch.zeros(candidates.shape, dtype=torch.long)
    for q in range(candidates.shape[0]):
        qf = query_feats[q].float()
        for j, d in enumerate(candidates[q].tolist()):
            scores[q, j] = verified_matches(kp, kp, mutual_nearest_neighbours(qf, database[d]), threshold)
    # Stable sort: equal scores keep the global order.
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return candidates.gather(1, order), scores
