"""Place batches (P places x K images), the training unit of the modern recipes (GSV-Cities, EigenPlaces).

A *place* is a set of images of one location: a GSV-Cities ``place_id``, or, for any dataset with
coordinates, a UTM cell of ``place_size_m`` metres (EigenPlaces' classes) with its database and
query visits pooled, so that a place's K views span conditions. Cells are split into
``group_spacing ** 2`` groups by ``(cell_east mod N, cell_north mod N)``; a batch draws its P
places from one group, so two places of a batch are at least ``(N - 1) * place_size_m`` metres
apart and the multi-similarity loss never treats views of one location as negatives.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from structvpr.data.datamodule import VPRDataModule
from structvpr.data.datasets import ImageDataset
from structvpr.data.formats import read_gsv_cities
from structvpr.data.vg import ImageRecord


@dataclass(frozen=True)
class Places:
    """Images grouped into places, and places into groups whose members are far apart.

    Attributes:
        images: Per place, the image ids (sorted).
        group: ``(num_places,)`` group of every place.
        dropped: Places left out for having fewer than ``min_images`` images.
        dropped_images: Images of those places.

    """

    images: list[np.ndarray]
    group: np.ndarray
    dropped: int
    dropped_images: int

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, keep: np.ndarray) -> Places:
        """The places where ``keep`` (``(num_places,)`` bool) is True; the others count as dropped."""
        keep = np.asarray(keep, dtype=bool)
        gone = [ids for ids, k in zip(self.images, keep) if not k]
        return Places(
            images=[ids for ids, k in zip(self.images, keep) if k],
            group=self.group[keep],
            dropped=self.dropped + len(gone),
            dropped_images=self.dropped_images + int(sum(len(ids) for ids in gone)),
        )

    def place_of(self, num_images: int) -> np.ndarray:
        """``(num_images,)`` place of every image, -1 for the images of dropped places."""
        out = np.full(num_images, -1, dtype=np.int64)
        for p, ids in enumerate(self.images):
            out[ids] = p
        return out


def utm_places(utm: np.ndarray, place_size_m: float, group_spacing: int, min_images: int) -> Places:
    """Places as UTM cells of ``place_size_m`` metres; groups ``(cell mod group_spacing)`` per axis.

    Args:
        utm: ``(N, 2)`` east and north of every image.
        place_size_m: Side of a cell (EigenPlaces: 15 m).
        group_spacing: N: places of one group are at least ``(N - 1) * place_size_m`` apart (N >= 2).
        min_images: Cells with fewer images are dropped (K of the batches).

    """
    if place_size_m <= 0:
        raise ValueError(f"place_size_m must be > 0, got {place_size_m}")
    if group_spacing < 2:
        raise ValueError(f"group_spacing must be >= 2 (places of a group would touch), got {group_spacing}")
    cells = np.floor(np.asarray(utm, dtype=np.float64) / place_size_m).astype(np.int64)
    keys, inverse = np.unique(cells, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(inverse, minlength=len(keys)))[:-1])
    keep = [i for i, m in enumerate(members) if len(m) >= min_images]
    groups = (keys[:, 0] % group_spacing) * group_spacing + keys[:, 1] % group_spacing
    dropped = [m for i, m in enumerate(members) if len(m) < min_images]
    return Places(
        images=[np.sort(members[i]) for i in keep],
        group=groups[keep],
        dropped=len(dropped),
        dropped_images=int(sum(len(m) for m in dropped)),
    )


def place_fold(place: int | np.ndarray, folds: int) -> Any:
    """Fold of a place from its index among the kept places (sorted cells or ids): ``p % folds``.

    Neighbouring places fall in different folds, so every fold covers the whole area. A teacher
    trained with ``PlaceDataModule(place_folds=K, held_out_place_fold=k)`` never sees an image of
    a fold-``k`` place; the same training images, ``place_size_m`` and ``images_per_place`` give
    the same places, hence the same folds, in every run.
    """
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    return np.asarray(place) % folds


def labelled_places(place_ids: Sequence[Any], city: Sequence[str] | None, min_images: int) -> Places:
    """Places from given ids (GSV-Cities' ``place_id``), one group per city (in-city batches)."""
    key = [(c, p) for c, p in zip(city if city is not None else [""] * len(place_ids), place_ids)]
    index: dict[tuple[str, Any], list[int]] = {}
    for i, k in enumerate(key):
        index.setdefault(k, []).append(i)
    city_group = {c: g for g, c in enumerate(sorted({c for c, _ in index}))}
    images, group, dropped, dropped_images = [], [], 0, 0
    for (c, _), ids in index.items():
        if len(ids) < min_images:
            dropped, dropped_images = dropped + 1, dropped_images + len(ids)
            continue
        images.append(np.array(ids, dtype=np.int64))
        group.append(city_group[c])
    return Places(images, np.array(group, dtype=np.int64), dropped, dropped_images)


def epoch_batches(
    places: Places, per_batch: int, per_place: int, seed: int, epoch: int, is_query: np.ndarray | None = None
) -> np.ndarray:
    """``(num_batches, P, K)`` image ids of one epoch: every place at most once, P of one group per batch.

    Each group's places are shuffled and cut into batches of P (a group's last, incomplete batch
    is left out that epoch); the batches of all groups are then shuffled together, and each
    place contributes K of its images drawn without replacement. With ``is_query`` (per image)
    a place's K views mix its visits: ``K // 2`` query and ``K - K // 2`` database images where
    it has them, the rest topped up from the other kind, so the views span conditions.
    Everything is seeded by ``(seed, epoch)`` only, so an epoch's batches are the same whether
    the run got there in one go or was resumed.
    """
    rng = np.random.default_rng([seed, epoch])
    batches: list[np.ndarray] = []
    for g in np.unique(places.group):
        members = rng.permutation(np.flatnonzero(places.group == g))
        for start in range(0, len(members) - per_batch + 1, per_batch):
            batches.append(members[start : start + per_batch])
    if not batches:
        return np.zeros((0, per_batch, per_place), dtype=np.int64)
    order = rng.permutation(len(batches))
    out = np.empty((len(batches), per_batch, per_place), dtype=np.int64)
    for b, i in enumerate(order):
        for j, place in enumerate(batches[i]):
            out[b, j] = _draw(rng, places.images[place], per_place, is_query)
    return out


def _draw(rng: np.random.Generator, images: np.ndarray, k: int, is_query: np.ndarray | None) -> np.ndarray:
    if is_query is None:
        return rng.choice(images, size=k, replace=False)
    queries, database = rng.permutation(images[is_query[images]]), rng.permutation(images[~is_query[images]])
    nq = min(len(queries), max(k // 2, k - len(database)))
    return rng.permutation(np.concatenate([queries[:nq], database[: k - nq]]))


class PlaceBatchDataset(Dataset[dict[str, Any]]):
    """One item per batch of the current epoch: P places x K images from one group.

    Items (collate with ``batch_size=None``) are dicts of

    - ``image``: ``(P, K, 3, H, W)`` float32 RGB (training transform);
    - ``label``: ``(P, K, G, H, W)`` one-hot label maps, through the same joint transform (with labels);
    - ``place``: ``(P, K)`` int64 place ids (the metric loss's labels);
    - ``image_index``: ``(P, K)`` int64 ids in ``bank``;
    - ``utm``: ``(P, K, 2)`` float64 coordinates;
    - ``batch``: the batch's position in the epoch.

    A place's K views mix its query and database visits (:func:`epoch_batches`). One dataset
    item is one whole batch, so a distributed sampler hands every process other
    batches, never half a place. :meth:`set_epoch` (called by the task at each epoch start)
    picks the epoch's batches; DataLoader workers read the epoch from shared memory, so they
    need no restart.

    Args:
        bank: Training images with the training transform.
        places: Their places (:func:`utm_places` or :func:`labelled_places`).
        places_per_batch: P.
        images_per_place: K.
        seed: Seed of the batch order and of the K images drawn per place.

    """

    def __init__(self, bank: ImageDataset, places: Places, places_per_batch: int, images_per_place: int, seed: int = 0) -> None:
        if places_per_batch < 2 or images_per_place < 2:
            raise ValueError(f"need P >= 2 places of K >= 2 images, got P={places_per_batch}, K={images_per_place}")
        self.bank, self.places = bank, places
        self.places_per_batch, self.images_per_place, self.seed = places_per_batch, images_per_place, seed
        sizes = np.bincount(places.group) if len(places) else np.zeros(0, dtype=np.int64)
        if len(places) == 0 or sizes.max() < places_per_batch:
            raise ValueError(
                f"no group has {places_per_batch} places of >= {images_per_place} images ({len(places)} places kept, "
                f"largest group {int(sizes.max()) if len(sizes) else 0}, {places.dropped} dropped): lower P or K, "
                "or use larger places"
            )
        rank_zero_info(
            f"place batches: {len(places)} places of >= {images_per_place} images in {int((sizes > 0).sum())} groups; "
            f"{places.dropped} places ({places.dropped_images} images) with fewer dropped"
        )
        self._place_of = places.place_of(len(bank))
        # The same for every epoch: a group contributes floor(places / P) batches whatever the shuffle.
        self._num_batches = int(sum(n // places_per_batch for n in sizes))
        # database then queries in the bank: a place's K views mix both visits (None: one kind only)
        self._is_query = np.arange(len(bank)) >= bank.num_database if bank.num_queries and bank.num_database else None
        self._shared_epoch = torch.zeros(1, dtype=torch.long).share_memory_()
        self._cached: tuple[int, np.ndarray] | None = None

    @property
    def epoch(self) -> int:
        return int(self._shared_epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Serve the batches of ``epoch`` (seen by DataLoader workers too)."""
        self._shared_epoch[0] = epoch

    def batches(self, epoch: int | None = None) -> np.ndarray:
        """``(num_batches, P, K)`` image ids of an epoch (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        if self._cached is None or self._cached[0] != epoch:
            k, p = self.images_per_place, self.places_per_batch
            self._cached = (epoch, epoch_batches(self.places, p, k, self.seed, epoch, self._is_query))
        return self._cached[1]

    @property
    def place_of(self) -> np.ndarray:
        """``(len(bank),)`` place of every training image (-1: a dropped place)."""
        return self._place_of

    def __len__(self) -> int:
        return self._num_batches

    def __getitem__(self, b: int) -> dict[str, Any]:
        ids = self.batches()[b]
        place = self._place_of[ids]
        # Augmentation depends on (seed, epoch, batch) only, not on the process or worker that loads it.
        with torch.random.fork_rng(devices=[]):
            entropy = np.random.SeedSequence([self.seed, self.epoch, b, 1]).generate_state(1, dtype=np.uint64)[0]
            torch.manual_seed(int(entropy >> 1))
            views = [self.bank.load(int(i)) for i in ids.ravel()]
        shape = ids.shape
        item: dict[str, Any] = {
            "image": torch.stack([v[0].as_subclass(torch.Tensor) for v in views]).view(*shape, *views[0][0].shape),
            "place": torch.from_numpy(place),
            "image_index": torch.from_numpy(ids.copy()),
            "batch": torch.tensor(b),
            "utm": self.bank.utm[torch.from_numpy(ids.ravel())].view(*shape, 2),
        }
        if views[0][1] is not None:
            labels = [v[1] for v in views if v[1] is not None]
            item["label"] = torch.stack(labels).view(*shape, *labels[0].shape)
        return item


class PlaceBatchSampler(DistributedSampler[int]):
    """The epoch's place batches in order, process ``r`` of ``W`` taking batches ``r, r + W, r + 2W, ...``.

    The batch order is already shuffled by :func:`epoch_batches`, so nothing is shuffled here; at
    step ``t`` every process holds one of the batches ``t W .. t W + W - 1``, which is what lets
    a distillation task and its weighting share one window of upcoming batches across processes
    (:class:`~structvpr.tasks.PlaceDistillation`). Batches beyond the last full round of ``W`` are
    left out, so every process runs the same number of steps. A ``DistributedSampler``, so
    Lightning keeps it under DDP instead of putting its own shuffled one in its place.
    """

    def __init__(self, dataset: PlaceBatchDataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        import torch.distributed as dist

        if num_replicas is None or rank is None:
            ready = dist.is_available() and dist.is_initialized()
            num_replicas = dist.get_world_size() if ready and num_replicas is None else (num_replicas or 1)
            rank = dist.get_rank() if ready and rank is None else (rank or 0)
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=True)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_samples * self.num_replicas, self.num_replicas))


def _local_metres(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Equirectangular east/north in metres about the mean latitude (GSV-Cities gives no UTM)."""
    r = 6_371_000.0
    lat0 = np.deg2rad(lat.mean()) if len(lat) else 0.0
    return np.stack([r * np.deg2rad(lon) * np.cos(lat0), r * np.deg2rad(lat)], axis=1)


class PlaceDataModule(VPRDataModule):
    """Training in place batches (P places x K images, the modern recipes), evaluation as :class:`VPRDataModule`.

    Training images come from GSV-Cities (``gsv_cities_root`` with ``gsv_cities``: places are
    its ``place_id`` s, a batch holds one city's places as GSV-Cities' in-city batches) or from
    the training split of any dataset with coordinates (VG folders, the synthetic world, or
    ``train_benchmark``): places are UTM cells of ``place_size_m`` metres pooling database and
    query visits, and a batch's places share a group so they lie at least
    ``(group_spacing - 1) * place_size_m`` metres apart (:func:`utm_places`). Places with
    fewer than K images are dropped, counted and logged. Every epoch visits each place at most
    once, in an order seeded by ``(seed, epoch)`` (a resumed run sees the same batches); under
    DDP each process takes whole batches.

    Train batches are dicts of ``image`` ``(P, K, 3, H, W)``, ``label`` ``(P, K, G, H, W)``
    (with labels), ``place`` ``(P, K)``, ``image_index`` ``(P, K)`` and ``utm`` ``(P, K, 2)``
    (see :class:`PlaceBatchDataset`); val/test/predict batches are :class:`VPRDataModule` 's.

    Args:
        places_per_batch: P (GSV-Cities recipes: 120 for MixVPR, 60 for SALAD, 128-160 for BoQ).
        images_per_place: K (4 in every recipe).
        place_size_m: Side of a place's UTM cell (EigenPlaces: 15 m).
        group_spacing: N of the groups (EigenPlaces: 3).
        gsv_cities_root: GSV-Cities root (``Dataframes/``, ``Images/``) to train on instead of the
            training split.
        gsv_cities: The GSV-Cities cities to train on (with ``gsv_cities_root``).
        place_folds: Number of folds the places are split into (:func:`place_fold`); only used
            with ``held_out_place_fold``.
        held_out_place_fold: Train without the places of this fold: the fold teachers of
            :class:`~structvpr.callbacks.PlaceWeighting` (``crossfit_teachers``), teacher ``k``
            trained with ``held_out_place_fold=k``, rank only places they never saw.
        **kwargs: :class:`VPRDataModule` 's arguments (``root``, ``image_size``, ``val_benchmark``, ...);
            the triplet ones (``batch_size``, ``num_negatives``, radii, ``cache_queries``) are not read.

    """

    def __init__(
        self,
        places_per_batch: int = 8,
        images_per_place: int = 4,
        place_size_m: float = 10.0,
        group_spacing: int = 3,
        gsv_cities_root: str | None = None,
        gsv_cities: list[str] | None = None,
        place_folds: int = 1,
        held_out_place_fold: int | None = None,
        **kwargs: Any,
    ) -> None:
        if (gsv_cities_root is None) != (gsv_cities is None):
            raise ValueError("give both gsv_cities_root and gsv_cities, or neither")
        if place_folds < 1:
            raise ValueError(f"place_folds must be >= 1, got {place_folds}")
        if held_out_place_fold is not None and not 0 <= held_out_place_fold < place_folds:
            raise ValueError(
                f"held_out_place_fold must lie in 0 .. place_folds - 1 = {place_folds - 1}, got {held_out_place_fold}"
            )
        if kwargs.get("held_out_fold") is not None:
            raise ValueError("place batches hold out places, not queries: use held_out_place_fold and place_folds")
        super().__init__(**kwargs)
        self.train_dataset: PlaceBatchDataset | None = None  # type: ignore[assignment]

    @property
    def training_tuples(self) -> Any:
        raise TypeError("PlaceDataModule trains on place batches: hard-negative mining of triplets does not apply")

    def _setup_training(self) -> None:
        hp = self.hp
        k = hp.images_per_place
        if hp.gsv_cities_root is not None:
            items = read_gsv_cities(hp.gsv_cities_root, list(hp.gsv_cities), min_images=k)
            lat = np.array([i.lat for i in items])
            lon = np.array([i.lon for i in items])
            utm = _local_metres(lat, lon)
            records = [ImageRecord(i.path, (float(e), float(n)), None) for i, (e, n) in zip(items, utm)]
            if hp.with_labels:
                raise ValueError("GSV-Cities has no label maps: set data.init_args.with_labels=false")
            bank = self._training_bank(records, [])
            places = labelled_places([i.place for i in items], [str(i.place // 100000) for i in items], k)
        else:
            bank = self._training_bank(*self._training_records())
            places = utm_places(bank.utm.numpy(), hp.place_size_m, hp.group_spacing, k)
        if hp.held_out_place_fold is not None:
            places = places.subset(place_fold(np.arange(len(places)), hp.place_folds) != hp.held_out_place_fold)
            rank_zero_info(f"place batches: fold {hp.held_out_place_fold} of {hp.place_folds} held out")
        self.train_dataset = PlaceBatchDataset(bank, places, hp.places_per_batch, k, hp.seed)

    def train_dataloader(self) -> DataLoader[Any]:
        if self.train_dataset is None:
            raise RuntimeError("call setup('fit') first")
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            self.train_dataset.set_epoch(trainer.current_epoch)
        # one item is one batch; process r of W takes batches r, r + W, ... (PlaceBatchSampler)
        return self._loader(self.train_dataset, None, sampler=PlaceBatchSampler(self.train_dataset))
