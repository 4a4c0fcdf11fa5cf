"""LightningDataModule serving training tuples and database/query evaluation sets."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
from lightning_fabric.utilities.data import AttributeDict
from torch.utils.data import DataLoader

from structvpr.data import synthetic
from structvpr.data.benchmarks import TRAINING_SPLITS, VALIDATION_SPLITS, load_benchmark
from structvpr.data.datasets import (
    EncodingView,
    FolderDataset,
    ImageDataset,
    ImageReadError,
    SubEpochSampler,
    TripletDataset,
    bad_images_message,
    joint_transform,
    query_fold,
)
from structvpr.data.formats import SplitManifest
from structvpr.data.labels import ClassGrouping, cityscapes_grouping
from structvpr.data.verify import verify_files
from structvpr.data.vg import ImageRecord, read_split
from structvpr.errors import LabelMapError

GROUPINGS = {"cityscapes": cityscapes_grouping}


def interleaved_order(dataset: ImageDataset) -> list[int]:
    """Dataset indices with database and query items interleaved by their relative position.

    Any prefix of this order holds database images and queries in the proportion of the
    whole set, so a validation limited to its first batches still searches queries against a
    database (a subsample of both).
    """
    n_db, n_q = dataset.num_database, dataset.num_queries
    keys = np.concatenate([(np.arange(n_db) + 0.5) / max(n_db, 1), (np.arange(n_q) + 0.5) / max(n_q, 1)])
    return np.argsort(keys, kind="stable").tolist()


class VPRDataModule(pl.LightningDataModule):
    """Training tuples and evaluation sets from the VG ``@`` folder format or a named split.

    Each stage reads ``<root>/images/<split>/`` (VG format, the synthetic world) unless a
    named split of :mod:`structvpr.data.benchmarks` is given for it (``train_benchmark``,
    ``val_benchmark``, ``test_benchmark``), which reads the dataset's native layout
    (Pittsburgh ``.mat``, MSLS CSVs, Nordland lists, ...) with its own threshold.

    Train batches are dicts of ``image`` ``(B, 2 + M, 3, H, W)``, ``label``
    ``(B, 2 + M, G, H, W)``, ``index`` ``(B,)`` (training-query index, see
    :class:`~structvpr.data.datasets.TripletDataset`) and ``image_index`` ``(B, 2 + M)``.
    Val/test/predict batches are dicts of ``image``, ``label``, ``index``, ``utm`` and
    ``is_query`` over the database followed by the queries (see
    :class:`~structvpr.data.datasets.ImageDataset`).

    Args:
        root: Dataset root holding ``images/`` (and ``labels/``).
        image_size: ``(H, W)`` fed to the networks.
        eval_image_size: ``(H, W)`` of validation, test and predict images when it differs from the
            training size (the DINOv2 recipes train at 224 and test at 322); None: ``image_size``.
        batch_size: Training tuples per batch.
        eval_batch_size: Images per batch when encoding.
        num_negatives: M, negatives per tuple.
        num_workers: DataLoader worker processes.
        train_pos_radius: Training positives lie within this many metres.
        train_neg_radius: Negatives lie beyond this many metres.
        eval_radius: Not read (kept so old configs parse; setting it warns): the correct-match
            radius is the task's ``eval_radius`` for VG folders, or the named split's own threshold.
        with_labels: Load label maps (needed by the teacher and by distillation); ``test``, ``validate`` and
            ``predict`` of an RGB model never read them, so RGB-only folders need none.
        grouping: Name of the label grouping (``cityscapes``).
        augment: Colour jitter on training RGB (photometric only: label maps are untouched).
        crop_scale: Random crops of at least this fraction of the image area, with the source's
            aspect ratio, on training images and their label maps (None: the full frame, resized
            as in evaluation, the reference default on real photos). A geometric augmentation
            makes a teacher cache inexact: distillation then runs the teacher on each batch.
        rand_augment: ``(num_ops, magnitude)`` of RandAugment on training images (the modern recipes:
            ``(3, 15)``): :class:`~structvpr.data.datasets.JointRandAugment`, whose shear, translate
            and rotate move each label map with its image (so distillation runs the teacher on each
            batch's own maps).
        rand_augment_geometric: Let RandAugment shear, translate and rotate; False keeps to its
            photometric operations, so label maps never move and a teacher cache is exact.
        cache_queries: Training queries per sub-epoch (one Lightning epoch): each sub-epoch
            mines and trains on the tuples of this many queries (None: all of them, one
            sub-epoch per pass). The references use 1,000.
        synthetic_preset: When ``root`` does not exist, generate the synthetic world with
            this preset there (``None`` to raise instead).
        synthetic_seed: Seed of the generated world.
        synthetic_label_noise: Label-noise fraction of the generated world (preset default if None).
        seed: Seed of the initial random negatives.
        predict_database: Folder, or list of folders, of database images for ``predict`` (any
            names, no coordinates): their union is searched, as the MSLS protocol searches every
            evaluated city. With ``predict_queries``. Without them ``predict`` runs on
            ``test_benchmark`` when set (e.g. ``msls_val``: its subtask filter, panorama
            exclusion and cities), else on the test split.
        predict_queries: Folder, or list of folders, of query images for ``predict``.
        predict_keep_panoramas: Keep images that an MSLS folder's ``raw.csv`` marks as panoramas
            (the official evaluation drops them, and so does ``predict`` by default, with a warning).
        predict_skip_bad_images: ``predict`` leaves out images whose header does not decode and
            lists them (default: stop with the list). ``test`` and ``validate`` always stop:
            a protocol's numbers need every image.
        cache_images: Decode every image once and keep it in memory (small datasets only).
        query_folds: Number of folds the training queries are split into (query ``i`` of the
            training split, in file order, belongs to fold ``i % query_folds``, see
            :func:`~structvpr.data.datasets.query_fold`). Only used with ``held_out_fold``.
        held_out_fold: Train without the queries of this fold (the database is kept), e.g. the
            cross-fitted teachers of ``SampleWeighting(crossfit_teachers=...)``: teacher ``k``
            trains with ``held_out_fold=k`` and ranks exactly the queries it never saw.
        val_split: Split folder used for validation.
        test_split: Split folder used by ``test`` (``val`` to tune settings without touching test).
        test_benchmark: A named benchmark of :mod:`structvpr.data.benchmarks` (``pitts30k_test``,
            ``msls_val``, ``nordland``, ...) read from ``root`` for ``test``, with its own
            threshold or ground truth, instead of ``test_split``.
        train_benchmark: A named training split (``msls_train``, ``pitts30k_train``,
            ``pitts250k_train``) read from ``root`` instead of ``images/train``.
        val_benchmark: A named split for validation (``msls_val``, ``pitts30k_val``, ...)
            instead of ``val_split``.
        benchmark_options: Keyword options per named split, e.g.
            ``{"tokyo247": {"one_hit_per_panorama": true}}`` or
            ``{"msls_train": {"cities": ["london", "boston"]}}``.
    """

    def __init__(
        self,
        root: str = "data/synthetic-demo",
        image_size: tuple[int, int] = (64, 128),
        eval_image_size: tuple[int, int] | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 64,
        num_negatives: int = 4,
        num_workers: int = 0,
        train_pos_radius: float = 10.0,
        train_neg_radius: float = 25.0,
        eval_radius: float | None = None,
        with_labels: bool = True,
        grouping: str = "cityscapes",
        augment: bool = True,
        crop_scale: float | None = None,
        rand_augment: tuple[int, int] | None = None,
        rand_augment_geometric: bool = True,
        cache_queries: int | None = None,
        synthetic_preset: str | None = "demo",
        synthetic_seed: int = 0,
        synthetic_label_noise: float | None = None,
        seed: int = 0,
        predict_database: str | list[str] | None = None,
        predict_queries: str | list[str] | None = None,
        predict_keep_panoramas: bool = False,
        predict_skip_bad_images: bool = False,
        cache_images: bool = False,
        val_split: str = "val",
        test_split: str = "test",
        test_benchmark: str | None = None,
        train_benchmark: str | None = None,
        val_benchmark: str | None = None,
        benchmark_options: dict[str, dict[str, Any]] | None = None,
        query_folds: int = 1,
        held_out_fold: int | None = None,
    ) -> None:
        super().__init__()
        if query_folds < 1:
            raise ValueError(f"query_folds must be >= 1, got {query_folds}")
        if held_out_fold is not None and not 0 <= held_out_fold < query_folds:
            raise ValueError(f"held_out_fold must lie in 0 .. query_folds - 1 = {query_folds - 1}, got {held_out_fold}")
        if grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {sorted(GROUPINGS)}, got {grouping!r}")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if crop_scale is not None and not 0 < crop_scale <= 1:
            raise ValueError(f"crop_scale must lie in (0, 1] or be None, got {crop_scale}")
        if cache_queries is not None and cache_queries < 1:
            raise ValueError(f"cache_queries must be >= 1 or None, got {cache_queries}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if synthetic_preset is not None and synthetic_preset not in synthetic.PRESETS:
            raise ValueError(f"synthetic_preset must be one of {sorted(synthetic.PRESETS)}, got {synthetic_preset!r}")
        for arg, bench, allowed in (
            ("test_benchmark", test_benchmark, VALIDATION_SPLITS),
            ("val_benchmark", val_benchmark, VALIDATION_SPLITS),
            ("train_benchmark", train_benchmark, TRAINING_SPLITS),
        ):
            if bench is not None and bench not in allowed:
                raise ValueError(f"{arg} must be one of {sorted(allowed)}, got {bench!r}")
        used = {name for name in (test_benchmark, val_benchmark, train_benchmark) if name is not None}
        unused = sorted(set(benchmark_options or {}) - used)
        if unused:
            raise ValueError(f"benchmark_options names {unused}, which no stage uses (stages use {sorted(used)})")
        if (predict_database is None) != (predict_queries is None):
            raise ValueError("give both predict_database and predict_queries, or neither")
        self.save_hyperparameters(ignore=["eval_radius"])  # not read; the task's eval_radius is logged
        self.root = Path(root)
        self.image_size = tuple(image_size)
        #: ``(H, W)`` of evaluation images (val, test, predict).
        self.eval_image_size = tuple(eval_image_size) if eval_image_size is not None else self.image_size
        self.grouping: ClassGrouping = GROUPINGS[grouping]()
        self.train_dataset: TripletDataset | None = None
        self.train_images: ImageDataset | None = None
        self.val_dataset: ImageDataset | None = None
        self.test_dataset: ImageDataset | None = None
        self.predict_dataset: ImageDataset | FolderDataset | None = None
        #: The named split read for ``val`` and ``test``: its radius, ground truth, panorama
        #: groups and notes decide a correct match (absent for VG folders: the task's own
        #: ``eval_radius`` applies).
        self.protocols: dict[str, SplitManifest] = {}
        if eval_radius is not None:
            warnings.warn(
                "data.init_args.eval_radius is not read: set model.init_args.eval_radius (VG folders); a named "
                "split brings its own threshold",
                stacklevel=2,
            )
        same = self.selection_split()
        if same is not None:
            warnings.warn(
                f"validation and test both read {same}: the checkpoint kept by val/R@1 is then chosen on the split "
                "its test reports, which flatters the number; validate on held-out training data (msls_heldout, "
                "pitts30k_val) or another split",
                stacklevel=2,
            )

    def selection_split(self) -> str | None:
        """The split both validation and test read (model selection on the reported split), else None."""
        hp = self.hp
        if hp.val_benchmark is not None and hp.val_benchmark == hp.test_benchmark:
            return f"the named split {hp.val_benchmark}"
        if hp.val_benchmark is None and hp.test_benchmark is None and hp.val_split == hp.test_split:
            return f"the split folder {hp.val_split!r}"
        return None

    @property
    def hp(self) -> AttributeDict:
        """The init arguments (``hparams``), typed for attribute access."""
        return cast(AttributeDict, self.hparams)

    @property
    def training_tuples(self) -> TripletDataset:
        """The training tuples of the current sub-epoch (:class:`~structvpr.protocols.TrainingData`)."""
        if self.train_dataset is None:
            raise RuntimeError("call setup('fit') first")
        return self.train_dataset

    @property
    def num_label_channels(self) -> int:
        """G, channels of the one-hot label maps."""
        return self.grouping.num_channels

    def prepare_data(self) -> None:
        """Generate the synthetic world when ``root`` is missing and a preset is set."""
        hp = self.hp
        named = (hp.test_benchmark, hp.val_benchmark, hp.train_benchmark)
        generated = hp.predict_database is None and named == (None, None, None) and hp.synthetic_preset is not None
        if generated and not self.root.exists():
            synthetic.generate(self.root, hp.synthetic_preset, hp.synthetic_seed, label_noise=hp.synthetic_label_noise)

    def _split(self, split: str, labels: bool | None = None) -> tuple[list[ImageRecord], list[ImageRecord]]:
        """Database and query records of a VG split folder (label maps required when ``labels``)."""
        labels = self.hp.with_labels if labels is None else labels
        return (
            read_split(self.root, split, "database", require_labels=labels),
            read_split(self.root, split, "queries", require_labels=labels),
        )

    def _dataset(
        self,
        database: list[ImageRecord],
        queries: list[ImageRecord],
        train_transform: bool = False,
        share: ImageDataset | None = None,
        labels: bool | None = None,
        name: str = "training set",
        evaluation: bool = False,
    ) -> ImageDataset:
        hp = self.hp
        labels = hp.with_labels if labels is None else labels
        transform = joint_transform(
            self.eval_image_size if evaluation else self.image_size,  # type: ignore[arg-type]
            train=train_transform,
            photometric=hp.augment,
            crop_scale=hp.crop_scale,
            rand_augment=hp.rand_augment,
            rand_augment_geometric=hp.rand_augment_geometric,
            ignore_id=self.grouping.ignore_id,
        )
        dataset = ImageDataset(database, queries, transform, self.grouping, labels)
        if share is not None:  # same files, other transform: reuse the decoded cache
            dataset._cache = share._cache
            return dataset
        self._verify(database + queries, bool(labels), name)
        if hp.cache_images:
            dataset.preload()
        return dataset

    def _verify(self, records: list[ImageRecord], labels: bool, name: str) -> None:
        """Decode every image (and label map) of ``records`` before any long work; name every bad file."""
        bad = verify_files([r.path for r in records], "image", what=f"{name} images")
        if bad:
            raise ImageReadError(f"{name}: {bad_images_message(bad)}")
        if labels:
            maps = [r.label_path for r in records if r.label_path is not None]
            bad = verify_files(maps, "label", grouping=self.grouping, what=f"{name} label maps")
            if bad:
                raise LabelMapError(f"{name}: {bad_images_message(bad, kind='label map')}")

    def _named(self, name: str) -> SplitManifest:
        return load_benchmark(name, self.root, **(self.hp.benchmark_options or {}).get(name, {}))

    def _model_reads_labels(self) -> bool:
        """Whether the attached model reads label maps (an RGB model does not; unknown: yes)."""
        model = getattr(getattr(self, "trainer", None), "lightning_module", None)
        return getattr(model, "input_key", "label") != "image"

    def _eval_set(self, stage: str, benchmark: str | None, split: str, labels: bool | None = None) -> ImageDataset:
        if benchmark is None:
            dataset = self._dataset(*self._split(split, labels), labels=labels, name=f"{stage} set", evaluation=True)
        else:
            manifest = self._named(benchmark)
            self.protocols[stage] = manifest
            dataset = self._dataset(manifest.database, manifest.queries, labels=labels, name=f"{stage} set", evaluation=True)
        return dataset

    def setup(self, stage: str | None = None) -> None:
        """Read the splits the stage needs."""
        hp = self.hp
        if stage in ("fit", None) and self.train_images is None:
            self._setup_training()
        # Outside fit an RGB model is evaluated without label maps, so RGB-only folders need none.
        eval_labels = None if stage in ("fit", None) else bool(hp.with_labels) and self._model_reads_labels()
        if stage in ("fit", "validate", None) and self.val_dataset is None:
            self.val_dataset = self._eval_set("val", hp.val_benchmark, hp.val_split, eval_labels)
        if stage in ("test", None) and self.test_dataset is None:
            self.test_dataset = self._eval_set("test", hp.test_benchmark, hp.test_split, eval_labels)
        if stage == "predict" and self.predict_dataset is None:
            if hp.predict_database is not None:
                transform = joint_transform(self.eval_image_size, train=False)  # type: ignore[arg-type]
                folders = FolderDataset.from_folders(
                    hp.predict_database, hp.predict_queries, transform, keep_panoramas=hp.predict_keep_panoramas
                )
                bad = verify_files([str(p) for p in folders.paths], "image", what="images to predict")
                if bad and not hp.predict_skip_bad_images:
                    raise ImageReadError(
                        f"predict: {bad_images_message(bad)}\n(set data.init_args.predict_skip_bad_images=true to leave them out)"
                    )
                if bad:
                    warnings.warn(f"predict leaves out {bad_images_message(bad, shown=len(bad))}", stacklevel=2)
                    skip = {path for path, _ in bad}
                    keep_db = [p for p in folders.paths[: folders.num_database] if str(p) not in skip]
                    keep_q = [p for p in folders.paths[folders.num_database :] if str(p) not in skip]
                    folders = FolderDataset(keep_db, keep_q, transform)
                self.predict_dataset = folders
            else:
                self.predict_dataset = self._eval_set("test", hp.test_benchmark, hp.test_split, eval_labels)

    def _training_records(self) -> tuple[list[ImageRecord], list[ImageRecord]]:
        """Database and query records of the training split (without the held-out fold)."""
        hp = self.hp
        if hp.train_benchmark is None:
            database, queries = self._split("train")
        else:
            manifest = self._named(hp.train_benchmark)
            database, queries = manifest.database, manifest.queries
        if hp.held_out_fold is not None:
            queries = self._without_fold(queries, hp.query_folds, hp.held_out_fold)
        return database, queries

    def _training_bank(self, database: list[ImageRecord], queries: list[ImageRecord]) -> ImageDataset:
        """Sets ``train_images`` (un-augmented, for encoding passes) and returns the same images with the
        training transform, sharing one decoded cache."""  # noqa: D205
        self.train_images = self._dataset(database, queries)
        return self._dataset(database, queries, train_transform=True, share=self.train_images)

    def _setup_training(self) -> None:
        hp = self.hp
        bank = self._training_bank(*self._training_records())
        self.train_dataset = TripletDataset(
            bank, hp.num_negatives, hp.train_pos_radius, hp.train_neg_radius, hp.seed, hp.cache_queries
        )

    @staticmethod
    def _without_fold(queries: list[ImageRecord], folds: int, fold: int) -> list[ImageRecord]:
        keep = [r for r, f in zip(queries, query_fold(np.arange(len(queries)), folds)) if f != fold]
        if not keep:
            raise ValueError(f"held_out_fold={fold} of query_folds={folds} leaves no training query")
        return keep

    def _loader(
        self, dataset: Any, batch_size: int | None, sampler: Any = None, workers: int | None = None, persistent: bool = True
    ) -> DataLoader[Any]:
        """The one DataLoader factory: in order (or ``sampler``'s), the datamodule's workers, kept
        across epochs unless ``persistent`` is off (one-off encoding passes)."""  # noqa: D205
        workers = self.hp.num_workers if workers is None else workers
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, persistent_workers=persistent and workers > 0
        )

    def train_dataloader(self) -> DataLoader[Any]:
        if self.train_dataset is None:
            raise RuntimeError("call setup('fit') first")
        # Shuffled per sub-epoch by (seed, sub-epoch) and augmented per item by (seed, sub-epoch,
        # row): training resumed at a sub-epoch boundary repeats the uninterrupted run exactly.
        return self._loader(self.train_dataset, self.hp.batch_size, sampler=SubEpochSampler(self.train_dataset))

    def _eval_loader(self, dataset: ImageDataset, limit: Any) -> DataLoader[Any]:
        if limit is None or limit == 1.0:
            return self._loader(dataset, self.hp.eval_batch_size)
        # A limited run takes the first batches: interleave database and queries so that those
        # batches hold both in proportion (listed database first, they would hold no query).
        return self._loader(dataset, self.hp.eval_batch_size, sampler=interleaved_order(dataset))

    def _limit(self, name: str) -> Any:
        trainer = getattr(self, "trainer", None)
        return getattr(trainer, name, None) if trainer is not None else None

    def val_dataloader(self) -> DataLoader[Any]:
        if self.val_dataset is None:
            raise RuntimeError("call setup('fit') or setup('validate') first")
        return self._eval_loader(self.val_dataset, self._limit("limit_val_batches"))

    def test_dataloader(self) -> DataLoader[Any]:
        if self.test_dataset is None:
            raise RuntimeError("call setup('test') first")
        return self._eval_loader(self.test_dataset, self._limit("limit_test_batches"))

    def predict_dataloader(self) -> DataLoader[Any]:
        if self.predict_dataset is None:
            raise RuntimeError("call setup('predict') first")
        return self._loader(self.predict_dataset, self.hp.eval_batch_size)

    def train_images_dataloader(self, ids: Sequence[int] | np.ndarray | None = None, key: str = "image") -> DataLoader[Any]:
        """Training images (database then queries), un-augmented, for encoding passes.

        Args:
            ids: Bank ids to encode, in this order (None: all of them).
            key: The one input the pass reads, ``image`` (RGB) or ``label`` (one-hot maps).

        Returns:
            A loader of ``{key: (B, C, H, W), "index": (B,)}`` batches (``index``: position
            in ``ids``), using the datamodule's worker processes.
        """
        if self.train_images is None:
            raise RuntimeError("call setup('fit') first")
        ids = np.arange(len(self.train_images)) if ids is None else np.asarray(ids, dtype=np.int64)
        workers = self.hp.num_workers if len(ids) > self.hp.eval_batch_size else 0
        view = EncodingView(self.train_images, ids, key)
        return self._loader(view, self.hp.eval_batch_size, workers=workers, persistent=False)
