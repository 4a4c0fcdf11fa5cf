"""Named splits of public datasets: which reader, which threshold, which denominator.

:data:`BENCHMARKS` are the published test protocols, :data:`VALIDATION_SPLITS` adds the
validation sets used to pick checkpoints, and :data:`TRAINING_SPLITS` are the training sets
read from their native layouts. Every evaluation variant excludes queries without any
positive from the denominator and reports how many it excluded (``num_excluded``), so the
published variants can be told apart in a results table. Paths are relative to the dataset
root given with the name; keyword options (such as Tokyo 24/7's one hit per panorama) are
passed through :func:`load_benchmark`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from structvpr.data.formats import (
    SplitManifest,
    read_mat_dbstruct,
    read_msls,
    read_npy_gt,
    read_patchnetvlad,
    read_vg,
)
from structvpr.data.vg import DatasetLayoutError, ImageRecord

#: The 22 MSLS training cities.
MSLS_TRAIN_CITIES = (
    "trondheim",
    "london",
    "boston",
    "melbourne",
    "amsterdam",
    "helsinki",
    "tokyo",
    "toronto",
    "saopaulo",
    "moscow",
    "zurich",
    "paris",
    "bangkok",
    "budapest",
    "austin",
    "berlin",
    "ottawa",
    "phoenix",
    "goa",
    "amman",
    "nairobi",
    "manila",
)
#: Training cities :func:`msls_heldout` validates on by default (``lightning_configs/data/msls.yaml``
#: trains on the other 20), so that checkpoints are not chosen on ``msls_val``, the reported split.
MSLS_HELDOUT_CITIES = ("zurich", "ottawa")
#: The two MSLS validation cities.
MSLS_VAL_CITIES = ("cph", "sf")
#: Added to a city's easting (times its position in the city list) when several cities are
#: read for training: UTM coordinates repeat between zones, and a tuple must not mix cities.
CITY_OFFSET_M = 1e7


def msls_val(root: str | Path, subtask: str | None = "all") -> SplitManifest:
    """MSLS val, official protocol (``mapillary_sls`` val mode, task im2im): native layout
    ``train_val/{cph,sf}``, only the query and database rows whose ``subtask_index.csv`` column
    ``subtask`` is true (``all``, ``s2w``, ``w2s``, ``o2n``, ``n2o``, ``d2n``, ``n2d``),
    panoramas excluded, positives within 25 m, queries without a positive excluded: 740
    queries against 18,871 database images with ``all`` on the full set."""  # noqa: D205
    return _msls_cities_apart(root, list(MSLS_VAL_CITIES), "msls_val", subtask)


def msls_val_vg(root: str | Path) -> SplitManifest:
    """MSLS val as VPR-datasets-downloader writes it (VG folders ``images/val``): all non-panorama
    images of cph and sf (~11k queries), 25 m; NOT the official 740-query protocol."""  # noqa: D205
    return read_vg(root, "val", 25.0, name="msls_val_vg")


def pitts30k_test(root: str | Path) -> SplitManifest:
    """Pittsburgh 30k test from ``datasets/pitts30k_test.mat`` (10,000 db / 6,816 queries), 25 m."""
    return read_mat_dbstruct(root, Path(root) / "datasets" / "pitts30k_test.mat", name="pitts30k_test")


def pitts250k_test(root: str | Path) -> SplitManifest:
    """Pittsburgh 250k test from ``datasets/pitts250k_test.mat`` (~84k db / 8,280 queries), 25 m."""
    return read_mat_dbstruct(root, Path(root) / "datasets" / "pitts250k_test.mat", name="pitts250k_test")


def tokyo247(root: str | Path, one_hit_per_panorama: bool = False) -> SplitManifest:
    """Tokyo 24/7 in VG folders ``images/test`` (315 queries, 12 database cutouts per
    panorama), positives within 25 m.

    By default every database cutout counts (the VG convention). With
    ``one_hit_per_panorama`` each ranked list keeps only the best cutout of every panorama
    (VG file-name field 7), so R@N counts N distinct panoramas, as NetVLAD and Patch-NetVLAD
    report it; the two give different numbers and the results table says which was used.
    """  # noqa: D205
    manifest = read_vg(root, "test", 25.0, name="tokyo247")
    if one_hit_per_panorama:
        missing = [r.path for r in manifest.database if not r.pano_id]
        if missing:
            raise DatasetLayoutError(
                f"{missing[0]}: no panorama id in the file name (VG field 7); one_hit_per_panorama needs it "
                f"for every database image ({len(missing)} lack one)"
            )
        manifest.database_groups = [r.pano_id for r in manifest.database]
        manifest.name = "tokyo247 (one hit per panorama)"
        manifest.notes.append(f"one hit per panorama: {len(set(manifest.database_groups))} panoramas")
    return manifest


def nordland(root: str | Path) -> SplitManifest:
    """Nordland, Patch-NetVLAD split: summer database, winter queries (27,592 each), positives
    within +-7 frames (``dataset_imagenames/nordland_imageNames_{index,query}.txt`` and
    ``dataset_gt_files/nordland.npz``: both coordinates are the frame index and posDistThr is
    10, so frames within 10 / sqrt(2) = 7.07 count, 15 per query)."""  # noqa: D205
    root = Path(root)
    return read_patchnetvlad(
        root,
        root / "dataset_imagenames/nordland_imageNames_index.txt",
        root / "dataset_imagenames/nordland_imageNames_query.txt",
        root / "dataset_gt_files/nordland.npz",
        name="nordland",
    )


def nordland_vg(root: str | Path) -> SplitManifest:
    """Nordland as VPR-datasets-downloader writes it: VG folders ``images/test``, dummy UTM north
    = frame x 2.38 m, so 25 m is about +-10 frames."""  # noqa: D205
    return read_vg(root, "test", 25.0, name="nordland_vg")


def nordland_vprbench(root: str | Path, gt_dir: str | Path | None = None, allow_pickle: bool = False) -> SplitManifest:
    """Nordland, VPR-Bench subset ("Nordland*"): the roles of :func:`nordland` flipped, winter
    database (``ref/``, 27,592) and summer queries (``query/``, 2,760), positives from the
    ground-truth lists (1 frame), ``Nordland_{dbImages,qImages,gt}.npy`` in ``gt_dir``
    (``root`` by default).

    The ground truth is a pickled object array: pass ``allow_pickle=True`` only for a file
    you trust.
    """  # noqa: D205
    gt = Path(gt_dir) if gt_dir is not None else Path(root)
    return read_npy_gt(
        root,
        gt / "Nordland_dbImages.npy",
        gt / "Nordland_qImages.npy",
        gt / "Nordland_gt.npy",
        allow_pickle=allow_pickle,
        name="nordland_vprbench",
    )


# -- validation sets ------------------------------------------------------------------------------
def pitts30k_val(root: str | Path) -> SplitManifest:
    """Pittsburgh 30k val from ``datasets/pitts30k_val.mat`` (10,000 db / 7,608 queries), 25 m."""
    return read_mat_dbstruct(root, Path(root) / "datasets" / "pitts30k_val.mat", name="pitts30k_val")


def pitts250k_val(root: str | Path) -> SplitManifest:
    """Pittsburgh 250k val from ``datasets/pitts250k_val.mat``, 25 m."""
    return read_mat_dbstruct(root, Path(root) / "datasets" / "pitts250k_val.mat", name="pitts250k_val")


# -- training sets --------------------------------------------------------------------------------
def msls_train(root: str | Path, cities: list[str] | None = None) -> SplitManifest:
    """MSLS training cities in the native layout ``train_val/<city>/{query,database}``
    (the 22 of :data:`MSLS_TRAIN_CITIES` by default), panoramas excluded.

    Training positives lie within 10 m and negatives beyond 25 m (the datamodule's
    ``train_pos_radius`` and ``train_neg_radius``). Each city's easting is shifted by
    ``city index x`` :data:`CITY_OFFSET_M` so that no tuple mixes cities.
    """  # noqa: D205
    return _msls_cities_apart(root, list(cities or MSLS_TRAIN_CITIES), "msls_train")


def _msls_cities_apart(root: str | Path, cities: list[str], name: str, subtask: str | None = None) -> SplitManifest:
    """MSLS cities read one by one, each city's easting shifted by ``index x`` :data:`CITY_OFFSET_M`,
    so positives never cross cities (UTM coordinates repeat between zones), as the official code,
    which finds positives city by city."""  # noqa: D205
    parts = [read_msls(root, [city], name=name, subtask=subtask) for city in cities]

    def shifted(records: list[ImageRecord], k: int) -> list[ImageRecord]:
        return [ImageRecord(r.path, (r.utm[0] + k * CITY_OFFSET_M, r.utm[1]), r.label_path, r.note, r.pano_id) for r in records]

    database = [r for k, m in enumerate(parts) for r in shifted(m.database, k)]
    queries = [r for k, m in enumerate(parts) for r in shifted(m.queries, k)]
    notes = [f"{city}: {m.notes[0]}" for city, m in zip(cities, parts)]
    return SplitManifest(name, Path(root), database, queries, 25.0, notes=notes)


def msls_heldout(root: str | Path, cities: list[str] | None = None) -> SplitManifest:
    """MSLS training cities held out of training for model selection (:data:`MSLS_HELDOUT_CITIES` by
    default), read as ``msls_train`` reads them (panoramas excluded), positives within 25 m.

    Not an official protocol: the official val split, ``msls_val``, is what MSLS results report, so
    choosing checkpoints on it flatters them; train on the other cities (``lightning_configs/data/msls.yaml``).
    """  # noqa: D205
    return _msls_cities_apart(root, list(cities or MSLS_HELDOUT_CITIES), "msls_heldout")


def pitts30k_train(root: str | Path) -> SplitManifest:
    """Pittsburgh 30k train from ``datasets/pitts30k_train.mat`` (10,000 db / 7,416 queries);
    training positives within 10 m, negatives beyond 25 m (the datamodule's radii)."""  # noqa: D205
    return read_mat_dbstruct(root, Path(root) / "datasets" / "pitts30k_train.mat", name="pitts30k_train")


def pitts250k_train(root: str | Path) -> SplitManifest:
    """Pittsburgh 250k train from ``datasets/pitts250k_train.mat``; training positives within
    10 m, negatives beyond 25 m (the datamodule's radii)."""  # noqa: D205
    return read_mat_dbstruct(root, Path(root) / "datasets" / "pitts250k_train.mat", name="pitts250k_train")


Reader = Callable[..., SplitManifest]

#: Published test protocols (one validated config each under ``lightning_configs/benchmarks/``).
BENCHMARKS: dict[str, Reader] = {
    f.__name__: f
    for f in (msls_val, msls_val_vg, pitts30k_test, pitts250k_test, tokyo247, nordland, nordland_vg, nordland_vprbench)
}
#: Sets a model can be validated (or tested) on.
VALIDATION_SPLITS: dict[str, Reader] = {
    **BENCHMARKS,
    "pitts30k_val": pitts30k_val,
    "pitts250k_val": pitts250k_val,
    "msls_heldout": msls_heldout,
}
#: Training sets read from their native layouts.
TRAINING_SPLITS: dict[str, Reader] = {f.__name__: f for f in (msls_train, pitts30k_train, pitts250k_train)}
#: Every named split.
SPLITS: dict[str, Reader] = {**VALIDATION_SPLITS, **TRAINING_SPLITS}


def load_benchmark(name: str, root: str | Path, **options: Any) -> SplitManifest:
    """The manifest of the named split under ``root``, with the split's keyword ``options``.

    Raises:
        ValueError: for an unknown name, or an option the split does not take.
    """
    if name not in SPLITS:
        raise ValueError(f"benchmark must be one of {sorted(SPLITS)}, got {name!r}")
    reader = SPLITS[name]
    try:
        inspect.signature(reader).bind(root, **options)
    except TypeError as err:
        params = [p for p in inspect.signature(reader).parameters if p != "root"]
        raise ValueError(f"{name} takes the options {params}, got {sorted(options)}") from err
    return reader(root, **options)
