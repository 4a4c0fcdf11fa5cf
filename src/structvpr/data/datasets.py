"""Image and training-tuple datasets over VG records, with joint RGB + label-map transforms."""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.data import Dataset, Sampler
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2._utils import query_size

from structvpr.data.labels import IGNORE_ID, ClassGrouping, load_label_map
from structvpr.data.vg import ImageRecord, list_images, utm_array
from structvpr.errors import ImageReadError, MissingFolderError, MissingLabelMapError
from structvpr.retrieval.search import radius_neighbours

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; the error names the file when it is missing or corrupt."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except FileNotFoundError as err:
        raise ImageReadError(f"{path}: image is missing") from err
    except Exception as err:  # PIL raises several types for damaged files
        raise ImageReadError(f"{path}: cannot decode image ({err})") from err


class SourceAspectResizedCrop(v2.RandomResizedCrop):
    """A random crop with the source image's own aspect ratio, resized to ``size``.

    The crop keeps a fraction ``s ~ U(scale)`` of the image area, with the height and the
    width both shrunk by ``sqrt(s)``, so the content is zoomed by at most
    ``1 / sqrt(min(scale))`` and never stretched more than evaluation's plain resize of the
    full frame stretches it: a 640x480 photo and a 2:1 panorama cutout alike. (A fixed ratio
    range, as torchvision's own ``RandomResizedCrop`` draws, crops a 4:3 photo to the same
    wide band every time and stretches it.)
    """

    def __init__(self, size: tuple[int, int], scale: tuple[float, float] = (0.8, 1.0)) -> None:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {scale}")
        super().__init__(size, scale=scale, antialias=True)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = query_size(flat_inputs)
        side = float(torch.empty(1).uniform_(self.scale[0], self.scale[1])) ** 0.5
        h, w = max(1, round(height * side)), max(1, round(width * side))
        top = int(torch.randint(0, height - h + 1, (1,)))
        left = int(torch.randint(0, width - w + 1, (1,)))
        return {"top": top, "left": left, "height": h, "width": w}


def bad_images_message(bad: list[tuple[str, str]], shown: int = 10, kind: str = "image") -> str:
    """One short message for a list of bad files."""
    more = f"\n  ... and {len(bad) - shown} more" if len(bad) > shown else ""
    return f"{len(bad)} unreadable {kind}(s):\n  " + "\n  ".join(f"{p}: {why}" for p, why in bad[:shown]) + more


class JointRandAugment(v2.RandAugment):
    """torchvision's RandAugment on an RGB image and, for its geometric operations, on its label map too.

    Operations, magnitudes and signs are drawn exactly as ``v2.RandAugment`` draws them (the same
    random calls, so an image alone gets the same result); each geometric one (``ShearX``,
    ``ShearY``, ``TranslateX``, ``TranslateY``, ``Rotate``) is applied to the ``tv_tensors.Mask``
    with the same parameters, nearest-neighbour, the uncovered area filled with ``ignore_id``
    (encoded as all-zero groups); photometric operations leave the mask alone. With
    ``geometric=False`` the draw is over the photometric operations only, so the label map never
    moves and a teacher's descriptors of un-augmented maps stay exact.

    Args:
        num_ops: Operations per image (the modern recipes: 3).
        magnitude: Magnitude bin (the modern recipes: 15 of 31).
        interpolation: RGB interpolation (tensors have no bicubic affine: bilinear here).
        geometric: Include shear, translate and rotate.
        ignore_id: Mask value of pixels moved in from outside the frame.

    """

    GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: int = 9,
        interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR,
        geometric: bool = True,
        ignore_id: int = IGNORE_ID,
    ) -> None:
        super().__init__(num_ops=num_ops, magnitude=magnitude, interpolation=interpolation)
        self.geometric, self.ignore_id = geometric, ignore_id
        if not geometric:
            space: dict[str, Any] = dict(v2.RandAugment._AUGMENTATION_SPACE)
            self._AUGMENTATION_SPACE = {k: v for k, v in space.items() if k not in self.GEOMETRIC}

    def forward(self, *inputs: Any) -> Any:
        flat, spec = tree_flatten(inputs if len(inputs) > 1 else inputs[0])
        images = [i for i, x in enumerate(flat) if isinstance(x, tv_tensors.Image)]
        masks = [i for i, x in enumerate(flat) if isinstance(x, tv_tensors.Mask)]
        if len(images) != 1 or len(masks) > 1:
            raise TypeError(f"JointRandAugment takes one Image and at most one Mask, got {[type(x).__name__ for x in flat]}")
        image = flat[images[0]]
        mask = flat[masks[0]] if masks else None
        height, width = image.shape[-2:]
        for _ in range(self.num_ops):
            op, (magnitudes_fn, signed) = self._get_random_item(self._AUGMENTATION_SPACE)
            magnitudes = magnitudes_fn(self.num_magnitude_bins, height, width)
            magnitude = 0.0
            if magnitudes is not None:
                magnitude = float(magnitudes[self.magnitude])
                if signed and torch.rand(()) <= 0.5:
                    magnitude *= -1
            image = self._apply_image_or_video_transform(image, op, magnitude, self.interpolation, self._fill)
            if mask is not None and op in self.GEOMETRIC:
                fill = {tv_tensors.Mask: float(self.ignore_id)}
                mask = self._apply_image_or_video_transform(mask, op, magnitude, v2.InterpolationMode.NEAREST, fill)
        flat[images[0]] = image
        if mask is not None:
            flat[masks[0]] = mask
        return tree_unflatten(flat, spec)


def joint_transform(
    image_size: tuple[int, int],
    train: bool,
    photometric: bool = True,
    crop_scale: float | None = None,
    rand_augment: tuple[int, int] | None = None,
    rand_augment_geometric: bool = True,
    ignore_id: int = IGNORE_ID,
) -> v2.Compose:
    """Transforms applied to a ``tv_tensors.Image`` and ``tv_tensors.Mask`` together.

    Evaluation resizes the full frame to ``image_size``. Training does the same by default,
    as the NetVLAD, MSLS and VG-benchmark references do on real photos, with colour jitter
    on the RGB only (``photometric``); ``crop_scale`` adds a random crop of at least that
    fraction of the area, with the source's aspect ratio
    (:class:`SourceAspectResizedCrop`), so training never sees a geometry evaluation does
    not. Geometric steps move image and mask together; photometric steps and the
    normalisation touch the RGB only, since v2 passes masks through them unchanged.

    Args:
        image_size: ``(H, W)`` fed to the networks.
        train: Training transforms (else evaluation: resize and normalise).
        photometric: Colour jitter on training RGB.
        crop_scale: Smallest crop area fraction in ``(0, 1]`` (None: no crop).
        rand_augment: ``(num_ops, magnitude)`` of RandAugment on training images, after the resize
            (the modern recipes: ``(3, 15)``; bilinear here, bicubic there): :class:`JointRandAugment`,
            whose shear, translate and rotate move the label map with its image.
        rand_augment_geometric: Let RandAugment shear, translate and rotate (False: photometric
            operations only, so label maps stay as read).
        ignore_id: Label id of pixels a geometric step moves in from outside the frame.
    """
    steps: list[Any] = []
    if train and crop_scale is not None:
        steps.append(SourceAspectResizedCrop(image_size, scale=(crop_scale, 1.0)))
    else:
        steps.append(v2.Resize(image_size, antialias=True))
    if train and rand_augment is not None:
        # bilinear: on tensors torchvision's affine ops have no bicubic (the references use it on PIL images)
        steps.append(JointRandAugment(rand_augment[0], rand_augment[1], geometric=rand_augment_geometric, ignore_id=ignore_id))
    if train and photometric:
        steps.append(v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)


def is_geometric(transform: Any) -> bool:
    """Whether a joint transform moves pixels at random (so the same image gives other views)."""
    steps = getattr(transform, "transforms", [transform])
    geometric = (v2.RandomResizedCrop, v2.RandomCrop, v2.RandomHorizontalFlip, v2.RandomAffine)
    rand = (v2.RandAugment,)
    return any(isinstance(t, geometric) or (isinstance(t, rand) and getattr(t, "geometric", True)) for t in steps)


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

    def __init__(
        self,
        database: Sequence[ImageRecord],
        queries: Sequence[ImageRecord],
        transform: Callable[..., Any],
        grouping: ClassGrouping | None = None,
        with_labels: bool = False,
    ) -> None:
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
                raise MissingLabelMapError(f"{missing[0]}: label map is missing ({len(missing)} images lack one)")
        self.utm = torch.from_numpy(utm_array(self.records))
        self._cache: list[tuple[torch.Tensor, torch.Tensor | None]] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def read(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decoded ``(3, H, W)`` uint8 RGB and ``(H, W)`` uint8 label ids of record ``i``, checked."""
        if self._cache is not None:
            return self._cache[i]
        rec = self.records[i]
        image = self.read_rgb(i)
        if not self.with_labels:
            return image, None
        label = self._read_label(i)
        if label.shape != tuple(image.shape[-2:]):
            raise ValueError(f"{rec.label_path}: label map is {tuple(label.shape)}, image is {tuple(image.shape[-2:])}")
        return image, label

    def _read_label(self, i: int) -> torch.Tensor:
        rec = self.records[i]
        assert rec.label_path is not None and self.grouping is not None
        return torch.from_numpy(load_label_map(rec.label_path, self.grouping))

    def encode_item(self, i: int, key: str) -> dict[str, Any]:
        """``{key: input, "index": i}`` decoding only that input (``image`` or ``label``), for encoding passes."""
        if key == "image":
            image = self._cache[i][0] if self._cache is not None else self.read_rgb(i)
            return {"image": self.transform(tv_tensors.Image(image)).as_subclass(torch.Tensor), "index": i}
        if key != "label" or self.grouping is None:
            raise ValueError(f"key must be 'image' or 'label' (with a grouping), got {key!r}")
        label = self._cache[i][1] if self._cache is not None else self._read_label(i)
        assert label is not None
        mask = self.transform(tv_tensors.Mask(label))
        return {"label": self.grouping.one_hot(mask.as_subclass(torch.Tensor)), "index": i}

    def read_rgb(self, i: int) -> torch.Tensor:
        """Decoded ``(3, H, W)`` uint8 RGB of record ``i``."""
        return torch.from_numpy(load_rgb(self.records[i].path)).permute(2, 0, 1)

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
        item = {"image": image.as_subclass(torch.Tensor), "index": i, "utm": self.utm[i], "is_query": i >= self.num_database}
        if label is not None:
            item["label"] = label
        return item


class EncodingView(Dataset[dict[str, Any]]):
    """Chosen items of an :class:`ImageDataset` with one input each (``image`` or ``label``).

    Encoding passes read only what they encode: a student pass decodes no label map and a
    teacher pass no RGB. Items are ``{key: tensor, "index": position in ids}``.
    """

    def __init__(self, dataset: ImageDataset, ids: Sequence[int] | np.ndarray, key: str) -> None:
        self.dataset, self.ids, self.key = dataset, np.asarray(ids, dtype=np.int64), key

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.dataset.encode_item(int(self.ids[i]), self.key), "index": i}


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
    def from_folders(
        cls,
        database: str | Path | Sequence[str | Path],
        queries: str | Path | Sequence[str | Path],
        transform: Callable[..., Any],
        keep_panoramas: bool = False,
    ) -> FolderDataset:
        """Every image under each folder (or list of folders, in the given order), sorted per folder.

        An empty or missing folder is an error naming it. In MSLS folders (``.../images`` beside
        a ``raw.csv``), images marked as panoramas are dropped, as the official evaluation
        drops them, with a warning that says how many (``keep_panoramas`` keeps them).
        """
        lists = []
        for role in (database, queries):
            folders = [role] if isinstance(role, (str, Path)) else list(role)
            files: list[Path] = []
            for folder in map(Path, folders):
                if not folder.is_dir():
                    raise MissingFolderError(f"{folder}: image folder does not exist")
                found = list_images(folder)
                if not found:
                    raise ValueError(f"{folder}: holds no .jpg/.jpeg/.png images")
                panoramas = msls_panoramas(folder)
                dropped = [f for f in found if f.stem in panoramas]
                if dropped:
                    action = "kept (keep_panoramas)" if keep_panoramas else "dropped, as the official evaluation does"
                    warnings.warn(
                        f"{folder}: {len(dropped)} of {len(found)} images are panoramas in {folder.parent / 'raw.csv'}: {action}",
                        stacklevel=2,
                    )
                    if not keep_panoramas:
                        found = [f for f in found if f.stem not in panoramas]
                files += found
            lists.append(files)
        return cls(lists[0], lists[1], transform)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = tv_tensors.Image(torch.from_numpy(load_rgb(self.paths[i])).permute(2, 0, 1))
        return {"image": self.transform(image).as_subclass(torch.Tensor), "index": i, "is_query": i >= self.num_database}


def query_fold(query_index: int | np.ndarray, folds: int) -> Any:
    """Fold of a training query from its index among the split's queries (file order): ``i % folds``.

    Neighbouring queries fall in different folds, so every fold covers the whole route: a
    teacher trained without fold ``k`` has seen the places of fold ``k`` (through the other
    folds' queries and the shared database), never its query images.
    """
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    return np.asarray(query_index) % folds


class SubEpochSampler(Sampler[int]):
    """A shuffle of a :class:`TripletDataset`'s rows seeded by (seed, sub-epoch): the same order
    whenever the sub-epoch is trained, so a run resumed at a sub-epoch boundary repeats it."""  # noqa: D205

    def __init__(self, dataset: TripletDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.dataset.item_seed())
        return iter(torch.randperm(len(self.dataset), generator=gen).tolist())


def msls_panoramas(folder: Path) -> set[str]:
    """Keys that the ``raw.csv`` beside an MSLS ``images`` folder marks as panoramas (empty elsewhere)."""
    raw = folder.parent / "raw.csv"
    if folder.name != "images" or not raw.is_file():
        return set()
    with open(raw, newline="") as f:
        return {row["key"] for row in csv.DictReader(f) if str(row.get("pano", "")).strip().lower() in ("true", "1")}


def _contains(sorted_ids: np.ndarray, value: int) -> bool:
    j = int(np.searchsorted(sorted_ids, value))
    return j < len(sorted_ids) and int(sorted_ids[j]) == value


class TripletDataset(Dataset[dict[str, Any]]):
    """The training tuples (query, positive, M negatives) of one sub-epoch, over a bank of images.

    Image ids ``0 .. num_database-1`` are database images and the rest queries, as in
    :class:`ImageDataset`, so descriptors of the bank can be indexed by ``image_index``.
    Only queries with a positive within ``pos_radius`` train (``num_training_queries`` of
    them); negatives lie beyond ``neg_radius``.

    Training runs in sub-epochs, as in the MSLS and VG-benchmark references: sub-epoch ``k``
    takes the next ``cache_queries`` training queries of a seeded permutation (a pass over
    the permutation covers every query once, then a new permutation starts) and trains on
    exactly their tuples. The tuples are rows of a table in shared memory, so DataLoader
    workers, which hold a copy of the dataset, read each sub-epoch's tuples without being
    restarted. :meth:`random_subepoch` fills it with a random GPS positive and random
    negatives; :class:`~structvpr.callbacks.HardNegativeMining` fills it through
    :meth:`set_tuples` with the descriptor-nearest positive and the hardest negatives.
    ``len(self)`` is the sub-epoch's size, one Lightning epoch.

    Items are dicts with keys:

    - ``image``: ``(2 + M, 3, H, W)`` query, positive, negatives (RGB);
    - ``label``: ``(2 + M, G, H, W)`` their one-hot label maps (when ``with_labels``), from
      the same joint transform as the RGB;
    - ``index``: int, training-query index in ``0 .. num_training_queries - 1``;
    - ``image_index``: ``(2 + M,)`` int64 ids in the image bank.

    Args:
        bank: The training images (database, then queries), with the training transform.
        num_negatives: M.
        pos_radius: Positives lie within this many metres.
        neg_radius: Negatives lie beyond this many metres.
        seed: Seed of the query order and of random tuples.
        cache_queries: Queries per sub-epoch (None: all of them).
    """

    def __init__(
        self,
        bank: ImageDataset,
        num_negatives: int = 4,
        pos_radius: float = 10.0,
        neg_radius: float = 25.0,
        seed: int = 0,
        cache_queries: int | None = None,
    ) -> None:
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        if not 0 < pos_radius <= neg_radius:
            raise ValueError(f"need 0 < pos_radius <= neg_radius, got {pos_radius}, {neg_radius}")
        if cache_queries is not None and cache_queries < 1:
            raise ValueError(f"cache_queries must be >= 1 or None, got {cache_queries}")
        self.bank = bank
        self.num_negatives = num_negatives
        self.seed = seed
        db_utm = bank.utm[: bank.num_database].numpy()
        q_utm = bank.utm[bank.num_database :].numpy()
        positives = radius_neighbours(q_utm, db_utm, pos_radius)
        near = radius_neighbours(q_utm, db_utm, neg_radius)
        keep = [i for i, p in enumerate(positives) if len(p)]
        if not keep:
            raise ValueError(f"no training query has a database image within {pos_radius} m")
        #: Indices (among the bank's queries) of the queries that train.
        self.query_ids = np.array(keep, dtype=np.int64)
        #: Per training query, the database ids within ``pos_radius`` (GPS positives), sorted.
        self.positives = [positives[i] for i in keep]
        #: Per training query, the database ids within ``neg_radius`` (never negatives), sorted.
        self.non_negatives = [near[i] for i in keep]
        self.cache_queries = len(keep) if cache_queries is None else min(cache_queries, len(keep))
        #: Rows ``[training query, positive id, negative ids...]`` of the current sub-epoch.
        self.tuples = torch.zeros(self.cache_queries, 2 + num_negatives, dtype=torch.long).share_memory_()
        #: The sub-epoch the table holds, and whether its tuples were mined (else random).
        self.subepoch, self.mined = -1, False
        #: Database ids encoded for the current sub-epoch (its queries' positives and the mining pool).
        self.subepoch_database = np.zeros(0, dtype=np.int64)
        # The sub-epoch index where DataLoader workers see it: it seeds each item's augmentation.
        self._shared_subepoch = torch.zeros(1, dtype=torch.long).share_memory_()
        self._permutations: dict[int, np.ndarray] = {}
        self.random_subepoch(0)

    @property
    def num_training_queries(self) -> int:
        """Queries with a positive, which train (sub-epochs draw from them)."""
        return len(self.query_ids)

    @property
    def num_database(self) -> int:
        """Database images of the bank (image ids ``0 .. num_database - 1``)."""
        return self.bank.num_database

    @property
    def utm(self) -> torch.Tensor:
        """``(N, 2)`` coordinates of the bank's images, database then queries."""
        return self.bank.utm

    #: Above this many database images, random negatives are drawn by rejection instead of
    #: from the explicit allowed list, which costs O(database) per query: 76 s against 1.4 s
    #: for 20,000 x 10,000 (benchmarks/triplet_setup.py).
    EXACT_SAMPLING_MAX = 2_000

    def random_negatives(self, i: int, rng: np.random.Generator) -> np.ndarray:
        """``M`` distinct random database ids beyond the negative radius of training query ``i``."""
        n_db, banned, m = self.bank.num_database, self.non_negatives[i], self.num_negatives
        if n_db - len(banned) < m:
            raise ValueError(f"only {n_db - len(banned)} database images lie beyond the negative radius")
        if n_db <= self.EXACT_SAMPLING_MAX or n_db - len(banned) < 2 * m:
            return rng.choice(np.setdiff1d(np.arange(n_db), banned), m, replace=False)
        chosen: list[int] = []
        while len(chosen) < m:  # banned is a tiny fraction of a large database: few rounds
            for c in rng.integers(0, n_db, size=2 * m).tolist():
                if c not in chosen and not _contains(banned, c):
                    chosen.append(c)
        return np.array(chosen[:m], dtype=np.int64)

    def _permutation(self, p: int) -> np.ndarray:
        if p not in self._permutations:
            self._permutations = {p: np.random.default_rng([self.seed, p]).permutation(self.num_training_queries)}
        return self._permutations[p]

    def subepoch_queries(self, k: int) -> np.ndarray:
        """The ``cache_queries`` training queries of sub-epoch ``k`` (distinct, in draw order)."""
        size, total = self.cache_queries, self.num_training_queries
        parts: list[np.ndarray] = []
        start, have = k * size, 0
        while have < size:
            p, offset = divmod(start, total)
            take = self._permutation(p)[offset : offset + size - have]
            parts.append(take)
            start, have = start + len(take), have + len(take)
        return np.concatenate(parts)

    def random_subepoch(self, k: int) -> None:
        """Fill the table with sub-epoch ``k``'s queries, a random GPS positive and random negatives each."""
        queries = self.subepoch_queries(k)
        rng = np.random.default_rng([self.seed, k, 1])
        positives = np.array([rng.choice(self.positives[q]) for q in queries], dtype=np.int64)
        negatives = np.stack([self.random_negatives(int(q), rng) for q in queries])
        self.set_tuples(k, queries, positives, negatives, mined=False)

    def set_tuples(
        self,
        k: int,
        queries: np.ndarray,
        positives: np.ndarray | torch.Tensor,
        negatives: np.ndarray | torch.Tensor,
        mined: bool = True,
        database: np.ndarray | None = None,
    ) -> None:
        """Make sub-epoch ``k`` train on these tuples.

        Args:
            k: Sub-epoch index.
            queries: ``(S,)`` training-query indices (``S = cache_queries``).
            positives: ``(S,)`` database ids, each a GPS positive of its query.
            negatives: ``(S, M)`` database ids, each beyond the negative radius of its query.
            mined: Whether the tuples were mined with the current model.
            database: Database ids encoded for the sub-epoch (default: the queries' GPS
                positives and the tuples' negatives).
        """
        queries = np.asarray(queries, dtype=np.int64)
        positives = np.asarray(positives, dtype=np.int64)
        negatives = np.asarray(negatives, dtype=np.int64)
        size, m = self.cache_queries, self.num_negatives
        if queries.shape != (size,) or positives.shape != (size,) or negatives.shape != (size, m):
            raise ValueError(
                f"a sub-epoch holds ({size},) queries and positives and ({size}, {m}) negatives, got "
                f"{queries.shape}, {positives.shape}, {negatives.shape}"
            )
        for q, p, negs in zip(queries.tolist(), positives.tolist(), negatives, strict=True):
            if not _contains(self.positives[q], p):
                raise ValueError(f"database image {p} is not a GPS positive of training query {q}")
            if np.isin(negs, self.non_negatives[q]).any():
                raise ValueError(f"a negative of training query {q} lies within the negative radius")
        table = torch.from_numpy(np.concatenate([queries[:, None], positives[:, None], negatives], 1))
        self.tuples.copy_(table)  # in place: workers share this storage
        self._shared_subepoch.fill_(k)
        self.subepoch, self.mined = k, mined
        if database is None:
            database = np.unique(np.concatenate([*(self.positives[q] for q in queries), negatives.ravel()]))
        self.subepoch_database = np.asarray(database, dtype=np.int64)

    def query_image_index(self, i: int | np.ndarray) -> Any:
        """Bank image id of training query ``i``."""
        return self.bank.num_database + self.query_ids[i]

    def __len__(self) -> int:
        return self.cache_queries

    def item_seed(self, i: int | None = None) -> int:
        """Seed of row ``i``'s random augmentation in the current sub-epoch (a function of seed, sub-epoch,
        row); of the sub-epoch's shuffle with ``i=None``."""  # noqa: D205
        k = int(self._shared_subepoch[0])
        entropy = [self.seed, k, 0 if i is None else i + 1]
        return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.tuples[i].tolist()
        query = row[0]
        ids = [int(self.query_image_index(query)), *row[1:]]
        # Each item's crops and jitter depend on (seed, sub-epoch, row) only, not on which process
        # or worker loads it: a run resumed from a checkpoint sees the same views.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.item_seed(i))
            loaded = [self.bank.load(j) for j in ids]
        item: dict[str, Any] = {
            "image": torch.stack([im.as_subclass(torch.Tensor) for im, _ in loaded]),
            "index": query,
            "image_index": torch.tensor(ids),
        }
        if self.bank.with_labels:
            item["label"] = torch.stack([lab for _, lab in loaded])  # type: ignore[misc]
        return item
