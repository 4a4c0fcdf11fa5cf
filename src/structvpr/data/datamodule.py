"""LightningDataModule serving training tuples and database/query evaluation sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from structvpr.data import synthetic
from structvpr.data.benchmarks import BENCHMARKS, load_benchmark
from structvpr.data.datasets import FolderDataset, ImageDataset, TripletDataset, joint_transform
from structvpr.data.labels import ClassGrouping, cityscapes_grouping
from structvpr.data.vg import read_split

GROUPINGS = {"cityscapes": cityscapes_grouping}


class VPRDataModule(pl.LightningDataModule):
    """Training tuples and evaluation sets from a dataset in the VG ``@`` folder format.

    Train batches are dicts of ``image`` ``(B, 2 + M, 3, H, W)``, ``label``
    ``(B, 2 + M, G, H, W)``, ``index`` ``(B,)`` (training-query index, see
    :class:`~structvpr.data.datasets.TripletDataset`) and ``image_index`` ``(B, 2 + M)``.
    Val/test/predict batches are dicts of ``image``, ``label``, ``index``, ``utm`` and
    ``is_query`` over the database followed by the queries (see
    :class:`~structvpr.data.datasets.ImageDataset`).

    Args:
        root: Dataset root holding ``images/`` (and ``labels/``).
        image_size: ``(H, W)`` fed to the networks.
        batch_size: Training tuples per batch.
        eval_batch_size: Images per batch when encoding.
        num_negatives: M, negatives per tuple.
        num_workers: DataLoader worker processes.
        train_pos_radius: Training positives lie within this many metres.
        train_neg_radius: Negatives lie beyond this many metres.
        eval_radius: A retrieved database image within this many metres is correct.
        with_labels: Load label maps (needed by the teacher and by distillation).
        grouping: Name of the label grouping (``cityscapes``).
        augment: Random resized crop and colour jitter on training images.
        synthetic_preset: When ``root`` does not exist, generate the synthetic world with
            this preset there (``None`` to raise instead).
        synthetic_seed: Seed of the generated world.
        synthetic_label_noise: Label-noise fraction of the generated world (preset default if None).
        seed: Seed of the initial random negatives.
        predict_database: Folder of database images for ``predict`` (any names, no coordinates);
            with ``predict_queries``. Without them ``predict`` runs on the test split.
        predict_queries: Folder of query images for ``predict``.
        cache_images: Decode every image once and keep it in memory (small datasets only).
        val_split: Split folder used for validation.
        test_split: Split folder used by ``test`` (``val`` to tune settings without touching test).
        test_benchmark: A named benchmark of :mod:`structvpr.data.benchmarks` (``pitts30k_test``,
            ``msls_val``, ``nordland``, ...) read from ``root`` for ``test``, with its own
            threshold or ground truth, instead of ``test_split``.
    """

    def __init__(self, root: str = "data/synthetic-demo", image_size: tuple[int, int] = (64, 128),
                 batch_size: int = 8, eval_batch_size: int = 64, num_negatives: int = 4,
                 num_workers: int = 0, train_pos_radius: float = 10.0, train_neg_radius: float = 25.0,
                 eval_radius: float = 25.0, with_labels: bool = True, grouping: str = "cityscapes",
                 augment: bool = True, synthetic_preset: str | None = "demo", synthetic_seed: int = 0,
                 synthetic_label_noise: float | None = None, seed: int = 0,
                 predict_database: str | None = None, predict_queries: str | None = None,
                 cache_images: bool = False, val_split: str = "val", test_split: str = "test",
                 test_benchmark: str | None = None) -> None:  # fmt: skip
        super().__init__()
        if grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {sorted(GROUPINGS)}, got {grouping!r}")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if synthetic_preset is not None and synthetic_preset not in synthetic.PRESETS:
            raise ValueError(f"synthetic_preset must be one of {sorted(synthetic.PRESETS)}, got {synthetic_preset!r}")
        if test_benchmark is not None and test_benchmark not in BENCHMARKS:
            raise ValueError(f"test_benchmark must be one of {sorted(BENCHMARKS)}, got {test_benchmark!r}")
        if (predict_database is None) != (predict_queries is None):
            raise ValueError("give both predict_database and predict_queries, or neither")
        self.save_hyperparameters()
        self.root = Path(root)
        self.image_size = tuple(image_size)
        self.grouping: ClassGrouping = GROUPINGS[grouping]()
        self.train_dataset: TripletDataset | None = None
        self.train_images: ImageDataset | None = None
        self.val_dataset: ImageDataset | None = None
        self.test_dataset: ImageDataset | None = None
        self.predict_dataset: ImageDataset | FolderDataset | None = None
        #: Ground truth of the test set when it is not the radius rule (see ``test_benchmark``).
        self.test_positives: list | None = None
        self.test_radius: float = eval_radius
        self.test_notes: list[str] = []

    @property
    def num_label_channels(self) -> int:
        """G, channels of the one-hot label maps."""
        return self.grouping.num_channels

    def prepare_data(self) -> None:
        """Generate the synthetic world when ``root`` is missing and a preset is set."""
        hp = self.hparams
        generated = hp.predict_database is None and hp.test_benchmark is None and hp.synthetic_preset is not None
        if generated and not self.root.exists():
            synthetic.generate(self.root, hp.synthetic_preset, hp.synthetic_seed, label_noise=hp.synthetic_label_noise)

    def _images(self, split: str, train_transform: bool = False, share: ImageDataset | None = None) -> ImageDataset:
        hp = self.hparams
        dataset = ImageDataset(
            read_split(self.root, split, "database", require_labels=hp.with_labels),
            read_split(self.root, split, "queries", require_labels=hp.with_labels),
            joint_transform(self.image_size, train=train_transform and hp.augment),  # type: ignore[arg-type]
            self.grouping, hp.with_labels,
        )  # fmt: skip
        if share is not None:  # same files, other transform: reuse the decoded cache
            dataset._cache = share._cache
        elif hp.cache_images:
            dataset.preload()
        return dataset

    def setup(self, stage: str | None = None) -> None:
        """Read the splits the stage needs."""
        hp = self.hparams
        if stage in ("fit", None) and self.train_dataset is None:
            self.train_images = self._images("train")
            bank = self._images("train", train_transform=True, share=self.train_images)
            self.train_dataset = TripletDataset(bank, hp.num_negatives, hp.train_pos_radius,
                                                hp.train_neg_radius, hp.seed)  # fmt: skip
        if stage in ("fit", "validate", None) and self.val_dataset is None:
            self.val_dataset = self._images(hp.val_split)
        if stage in ("test", None) and self.test_dataset is None and hp.test_benchmark is not None:
            manifest = load_benchmark(hp.test_benchmark, self.root)
            transform = joint_transform(self.image_size, train=False)  # type: ignore[arg-type]
            self.test_dataset = ImageDataset(manifest.database, manifest.queries, transform, self.grouping, hp.with_labels)
            self.test_positives, self.test_radius, self.test_notes = manifest.positives, manifest.radius, manifest.notes
        if stage in ("test", None) and self.test_dataset is None:
            self.test_dataset = self._images(hp.test_split)
        if stage == "predict" and self.predict_dataset is None:
            if hp.predict_database is not None:
                transform = joint_transform(self.image_size, train=False)  # type: ignore[arg-type]
                self.predict_dataset = FolderDataset.from_folders(hp.predict_database, hp.predict_queries, transform)
            else:
                self.predict_dataset = self._images(hp.test_split)

    def _loader(self, dataset: Any, batch_size: int, shuffle: bool) -> DataLoader[Any]:
        workers = self.hparams.num_workers
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                          persistent_workers=workers > 0, drop_last=False)  # fmt: skip

    def train_dataloader(self) -> DataLoader[Any]:
        assert self.train_dataset is not None, "call setup('fit') first"
        return self._loader(self.train_dataset, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        assert self.val_dataset is not None, "call setup('fit') or setup('validate') first"
        return self._loader(self.val_dataset, self.hparams.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader[Any]:
        assert self.test_dataset is not None, "call setup('test') first"
        return self._loader(self.test_dataset, self.hparams.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader[Any]:
        assert self.predict_dataset is not None, "call setup('predict') first"
        return self._loader(self.predict_dataset, self.hparams.eval_batch_size, shuffle=False)

    def train_images_dataloader(self) -> DataLoader[Any]:
        """Every training image (database then queries), un-augmented, for encoding passes."""
        assert self.train_images is not None, "call setup('fit') first"
        return DataLoader(self.train_images, batch_size=self.hparams.eval_batch_size, shuffle=False,
                          num_workers=0)  # fmt: skip

