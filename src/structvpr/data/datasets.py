"""Image and training-tuple datasets over VG records, with joint RGB + label-map transforms."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from structvpr.data.labels import ClassGrouping, load_label_map
from structvpr.data.vg import ImageRecord, list_images, utm_array
from structvpr.retrieval.search import radius_neighbours

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageReadError(ValueError):
    """An RGB image is missing or cannot be decoded."""


def load_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; the error names the file when it is missing or corrupt."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except FileNotFoundError as err:
        raise ImageReadError(f"{path}: image is missing") from err
    except Exception as err:  # PIL raises several types for damaged files
        raise ImageReadError(f"{path}: cannot decode image ({err})") from err


def joint_transform(image_size: tuple[int, int], train: bool) -> v2.Compose:
    """Transforms applied to a ``tv_tensors.Image`` and ``tv_tensors.Mask`` together.

    Geometric steps (resized crop) move both; photometric steps (colour jitter,
    normalisation) touch the RGB only, since v2 passes masks through them unchanged.
    """
    steps: list[Any] = []
    if train:
        steps += [
            v2.RandomResizedCrop(image_size, scale=(0.8, 1.0), ratio=(1.8, 2.2), antialias=True),
            v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3),
        ]
    else:
        steps.append(v2.Resize(image_size, antialias=True))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)


class ImageDataset(Dataset[dict[str, Any]]):
    """Single images (database then queries) for encoding and evaluation.

    Items are dicts with keys:

    - ``image``: ``(3, H, W)`` float32, normalised RGB;
    - ``label``: ``(G, H, W)`` float32 one-hot groups (only when ``with_labels``);
    - ``index``: int, position in this dataset;
    - ``utm``: ``(2,)`` float64 east/north;
    - ``is_query``: bool, False for the first ``num_database`` items.

    Args:
        database: Database records.
        queries: Query records (may be empty).
        transform: Joint transform (see :func:`joint_transform`).
        grouping: Label taxonomy and groups, needed when ``with_labels``.
        with_labels: Load and encode label maps.
    """

    def __init__(self, database: Sequence[ImageRecord], queries: Sequence[ImageRecord],
                 transform: Callable[..., Any], grouping: ClassGrouping | None = None,
                 with_labels: bool = False) -> None:  # fmt: skip
        self.records = list(database) + list(queries)
        self.num_database = len(database)
        self.num_queries = len(queries)
        self.transform = transform
        self.grouping = grouping
        self.with_labels = with_labels
        if with_labels:
            if grouping is None:
                raise ValueError("with_labels=True needs a grouping")
            missing = [r.path for r in self.records if r.label_path is None]
            if missing:
                raise FileNotFoundError(f"{missing[0]}: label map is missing ({len(missing)} images lack one)")
        self.utm = torch.from_numpy(utm_array(self.records))
        self._cache: list[tuple[torch.Tensor, torch.Tensor | None]] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def read(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decoded ``(3, H, W)`` uint8 RGB and ``(H, W)`` uint8 label ids of record ``i``, checked."""
        if self._cache is not None:
            return self._cache[i]
        rec = self.records[i]
        image = torch.from_numpy(load_rgb(rec.path)).permute(2, 0, 1)
        if not self.with_labels:
            return image, None
        assert rec.label_path is not None and self.grouping is not None
        label = load_label_map(rec.label_path, self.grouping)
        if label.shape != tuple(image.shape[-2:]):
            raise ValueError(f"{rec.label_path}: label map is {label.shape}, image is {tuple(image.shape[-2:])}")
        return image, torch.from_numpy(label)

    def preload(self) -> None:
        """Decode every image (and label map) once and keep it in memory.

        For small datasets (the synthetic world): decoding then no longer bounds the
        training speed, and worker processes share the decoded arrays copy-on-write.
        """
        if self._cache is None:
            self._cache = [self.read(i) for i in range(len(self))]

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Transformed RGB and one-hot label map of record ``i``."""
        image, label = self.read(i)
        if label is None:
            return self.transform(tv_tensors.Image(image)), None
        assert self.grouping is not None
        image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(label))
        return image, self.grouping.one_hot(mask.as_subclass(torch.Tensor))

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, label = self.load(i)
        item = {"image": image.as_subclass(torch.Tensor), "index": i, "utm": self.utm[i],
                "is_query": i >= self.num_database}  # fmt: skip
        if label is not None:
            item["label"] = label
        return item


class FolderDataset(Dataset[dict[str, Any]]):
    """Plain image files without coordinates (database first, then queries), for ``predict``.

    Items are dicts with ``image`` ``(3, H, W)``, ``index`` and ``is_query``.

    Args:
        database: Database image files.
        queries: Query image files.
        transform: Joint transform (see :func:`joint_transform`).
    """

    def __init__(self, database: Sequence[Path], queries: Sequence[Path], transform: Callable[..., Any]) -> None:
        self.paths = list(database) + list(queries)
        self.num_database = len(database)
        self.num_queries = len(queries)
        self.transform = transform

    @classmethod
    def from_folders(cls, database: str | Path, queries: str | Path, transform: Callable[..., Any]) -> FolderDataset:
        """Every image under each folder, sorted; an empty or missing folder is an error naming it."""
        lists = []
        for folder in (Path(database), Path(queries)):
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder}: image folder does not exist")
            files = list_images(folder)
            if not files:
                raise ValueError(f"{folder}: holds no .jpg/.jpeg/.png images")
            lists.append(files)
        return cls(lists[0], lists[1], transform)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = tv_tensors.Image(torch.from_numpy(load_rgb(self.paths[i])).permute(2, 0, 1))
        return {"image": self.transform(image).as_subclass(torch.Tensor), "index": i,
                "is_query": i >= self.num_database}  # fmt: skip


def _contains(sorted_ids: np.ndarray, value: int) -> bool:
    j = int(np.searchsorted(sorted_ids, value))
    return j < len(sorted_ids) and int(sorted_ids[j]) == value


class TripletDataset(Dataset[dict[str, Any]]):
    """Training tuples (query, positive, M negatives) over a bank of database + query images.

    Image ids ``0 .. num_database-1`` are database images and the rest queries, as in
    :class:`ImageDataset`, so descriptors of the bank can be indexed by ``image_index``.
    Only queries with a positive within ``pos_radius`` train. Negatives lie beyond
    ``neg_radius``; they start random and are replaced by :meth:`set_negatives`. The
    negative table lives in shared memory, so DataLoader workers, which hold a copy of the
    dataset, read each refresh without being restarted.

    Items are dicts with keys:

    - ``image``: ``(2 + M, 3, H, W)`` query, positive, negatives (RGB);
    - ``label``: ``(2 + M, G, H, W)`` their one-hot label maps (when ``with_labels``);
    - ``index``: int, training-query index in ``0 .. len(self) - 1``;
    - ``image_index``: ``(2 + M,)`` int64 ids in the image bank.
    """

    def __init__(self, bank: ImageDataset, num_negatives: int = 4, pos_radius: float = 10.0,
                 neg_radius: float = 25.0, seed: int = 0) -> None:  # fmt: skip
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        if not 0 < pos_radius <= neg_radius:
            raise ValueError(f"need 0 < pos_radius <= neg_radius, got {pos_radius}, {neg_radius}")
        self.bank = bank
        self.num_negatives = num_negatives
        db_utm = bank.utm[: bank.num_database].numpy()
        q_utm = bank.utm[bank.num_database :].numpy()
        positives = radius_neighbours(q_utm, db_utm, pos_radius)
        near = radius_neighbours(q_utm, db_utm, neg_radius)
        keep = [i for i, p in enumerate(positives) if len(p)]
        if not keep:
            raise ValueError(f"no training query has a database image within {pos_radius} m")
        #: Indices (among the bank's queries) of the queries that train.
        self.query_ids = np.array(keep, dtype=np.int64)
        self.positives = [positives[i] for i in keep]
        self.non_negatives = [near[i] for i in keep]
        rng = np.random.default_rng(seed)
        table = np.stack([self._random_negatives(i, rng) for i in range(len(keep))])
        self.negatives = torch.from_numpy(table).share_memory_()

    #: Above this many database images, random negatives are drawn by rejection instead of
    #: from the explicit allowed list, which costs O(database) per query: 76 s against 1.4 s
    #: for 20,000 x 10,000 (benchmarks/triplet_setup.py). Small databases keep the exact
    #: sampler: it also serves when few images are allowed, and it keeps the synthetic
    #: world's published numbers.
    EXACT_SAMPLING_MAX = 2_000

    def _random_negatives(self, i: int, rng: np.random.Generator) -> np.ndarray:
        n_db, banned, m = self.bank.num_database, self.non_negatives[i], self.num_negatives
        if n_db - len(banned) < m:
            raise ValueError(f"only {n_db - len(banned)} database images lie beyond the negative radius")
        if n_db <= self.EXACT_SAMPLING_MAX or n_db - len(banned) < 2 * m:
            return rng.choice(self.negative_candidates(i), m, replace=False)
        chosen: list[int] = []
        while len(chosen) < m:  # banned is a tiny fraction of a large database: few rounds
            for c in rng.integers(0, n_db, size=2 * m).tolist():
                if c not in chosen and not _contains(banned, c):
                    chosen.append(c)
        return np.array(chosen[:m], dtype=np.int64)

    def negative_candidates(self, i: int) -> np.ndarray:
        """Database ids that may serve as negatives of training query ``i``."""
        return np.setdiff1d(np.arange(self.bank.num_database), self.non_negatives[i])

    def set_negatives(self, indices: torch.Tensor | np.ndarray, negatives: torch.Tensor | np.ndarray) -> None:
        """Replace the negatives of training queries ``indices`` with ``negatives``, ``(n, M)``."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        negatives = torch.as_tensor(negatives, dtype=torch.long)
        if negatives.shape != (len(indices), self.num_negatives):
            raise ValueError(f"negatives must be ({len(indices)}, {self.num_negatives}), got {tuple(negatives.shape)}")
        self.negatives[indices] = negatives  # in place: workers share this storage

    def query_image_index(self, i: int | np.ndarray) -> Any:
        """Bank image id of training query ``i``."""
        return self.bank.num_database + self.query_ids[i]

    def __len__(self) -> int:
        return len(self.query_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        pos = self.positives[i][int(torch.randint(len(self.positives[i]), (1,)))]
        ids = [int(self.query_image_index(i)), int(pos), *self.negatives[i].tolist()]
        loaded = [self.bank.load(j) for j in ids]
        item: dict[str, Any] = {
            "image": torch.stack([im.as_subclass(torch.Tensor) for im, _ in loaded]),
            "index": i,
            "image_index": torch.tensor(ids),
        }
        if self.bank.with_labels:
            item["label"] = torch.stack([lab for _, lab in loaded])  # type: ignore[misc]
        return item
