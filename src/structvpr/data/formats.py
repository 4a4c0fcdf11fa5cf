"""Readers of public VPR dataset layouts into one manifest: database, queries and ground truth.

Every reader returns a :class:`SplitManifest`. Label maps are looked up in a parallel tree,
``<root>/labels/<image path relative to root>`` with a ``.png`` suffix (where
``structvpr segment`` writes them); a record's ``label_path`` is None when the map is absent.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from structvpr.data.vg import DatasetLayoutError, ImageRecord, label_path_for, read_split

#: Field positions in ``dbStruct`` of the Pittsburgh 30k/250k ``.mat`` files (NetVLAD).
PITTS_FIELDS = {"db_images": 1, "db_utm": 2, "q_images": 3, "q_utm": 4, "pos_radius": 7}
#: Field positions in ``dbStruct`` of the TokyoTM ``.mat`` files.
TOKYO_TM_FIELDS = {"db_images": 1, "db_utm": 2, "q_images": 4, "q_utm": 5, "pos_radius": 9}


@dataclass
class SplitManifest:
    """One evaluation or training split of a dataset.

    Attributes:
        name: Benchmark or split name.
        root: Dataset root the image paths live under.
        database: Database records.
        queries: Query records.
        radius: Positive radius in the units of ``utm`` (metres, or frames for Nordland).
        positives: Optional explicit ground truth, per query the positive database indices;
            when set it replaces the radius rule.
        notes: How the split was read (thresholds, exclusions), for the results table.
        database_groups: Optional group (panorama id) of every database record: Recall@N then
            counts one hit per group.
    """

    name: str
    root: Path
    database: list[ImageRecord]
    queries: list[ImageRecord]
    radius: float = 25.0
    positives: list[np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)
    database_groups: list[str] | None = None


def _record(root: Path, rel: str | Path, utm: Sequence[float] | np.ndarray, note: str = "") -> ImageRecord:
    path = root / rel
    return ImageRecord(path=path, utm=(float(utm[0]), float(utm[1])), label_path=label_path_for(path, root), note=note)


def _check_files(records: list[ImageRecord], source: Path) -> None:
    missing = [r.path for r in records if not r.path.is_file()]
    if missing:
        raise DatasetLayoutError(f"{source}: {len(missing)} listed images do not exist, first {missing[0]}")


# -- Pittsburgh / Tokyo .mat dbStruct -----------------------------------------------------------
def read_mat_dbstruct(
    root: str | Path,
    mat_path: str | Path,
    fields: dict[str, int] | None = None,
    query_dir: str = "queries_real",
    name: str | None = None,
) -> SplitManifest:
    """Read a NetVLAD ``dbStruct`` ``.mat`` file (Pittsburgh 30k/250k, Tokyo).

    Args:
        root: Dataset root: database paths are relative to it, query paths to ``root/query_dir``.
        mat_path: The ``.mat`` file.
        fields: Positions of ``db_images``, ``db_utm``, ``q_images``, ``q_utm`` and
            ``pos_radius`` in the struct (:data:`PITTS_FIELDS` by default; they differ between
            files, e.g. :data:`TOKYO_TM_FIELDS`).
        query_dir: Folder of the query images under ``root``.
        name: Manifest name (the file stem by default).
    """
    from scipy.io import loadmat

    root, mat_path = Path(root), Path(mat_path)
    fields = fields or PITTS_FIELDS
    if not mat_path.is_file():
        raise DatasetLayoutError(f"{mat_path}: missing; expected the NetVLAD dbStruct file (<root>/datasets/*.mat)")
    try:
        struct = loadmat(mat_path)["dbStruct"].item()
    except Exception as err:
        raise DatasetLayoutError(f"{mat_path}: not a readable .mat file with a 'dbStruct' ({err})") from err
    try:
        db_names = [str(np.asarray(x).ravel()[0]) for x in np.asarray(struct[fields["db_images"]]).ravel()]
        q_names = [str(np.asarray(x).ravel()[0]) for x in np.asarray(struct[fields["q_images"]]).ravel()]
        db_utm = np.asarray(struct[fields["db_utm"]], dtype=np.float64).reshape(2, -1).T
        q_utm = np.asarray(struct[fields["q_utm"]], dtype=np.float64).reshape(2, -1).T
        radius = float(np.asarray(struct[fields["pos_radius"]]).ravel()[0])
    except (IndexError, ValueError, TypeError) as err:
        raise DatasetLayoutError(f"{mat_path}: dbStruct fields are not at positions {fields} ({err})") from err
    if len(db_names) != len(db_utm) or len(q_names) != len(q_utm):
        raise DatasetLayoutError(
            f"{mat_path}: {len(db_names)} database names but {len(db_utm)} coordinates, "
            f"{len(q_names)} query names but {len(q_utm)} coordinates: check the field positions"
        )
    database = [_record(root, n, u) for n, u in zip(db_names, db_utm)]
    queries = [_record(root, Path(query_dir) / n, u) for n, u in zip(q_names, q_utm)]
    _check_files(database + queries, mat_path)
    return SplitManifest(
        name or mat_path.stem, root, database, queries, radius, notes=[f"{mat_path.name}: positives within {radius:g} m"]
    )


# -- MSLS native ----------------------------------------------------------------------------------
#: The columns of MSLS's ``subtask_index.csv``, as the official code names them: every image,
#: summer to winter, winter to summer, old to new, new to old, day to night, night to day.
MSLS_SUBTASKS = ("all", "s2w", "w2s", "o2n", "n2o", "d2n", "n2d")


def _true(value: object) -> bool:
    return str(value).strip().lower() in ("true", "1")


def _subtask_rows(path: Path, subtask: str) -> list[bool]:
    """Row ``i`` of ``subtask_index.csv``: whether image ``i`` (same row of ``postprocessed.csv``) is in ``subtask``."""
    if not path.is_file():
        raise DatasetLayoutError(
            f"{path}: missing; the official MSLS val protocol keeps only the rows whose "
            f"'{subtask}' column is true (benchmark_options "
            '{"msls_val": {"subtask": null}} reads every image instead)'
        )
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if subtask not in (reader.fieldnames or []):
            raise DatasetLayoutError(f"{path}: has no '{subtask}' column (columns: {reader.fieldnames})")
        return [_true(row[subtask]) for row in reader]


def read_msls(
    root: str | Path,
    cities: list[str],
    subset: str = "train_val",
    exclude_panoramas: bool = True,
    name: str = "msls",
    subtask: str | None = None,
) -> SplitManifest:
    """Read MSLS in its native layout: ``<subset>/<city>/{query,database}/images/<key>.jpg``.

    Coordinates come from ``postprocessed.csv`` (easting, northing); ``raw.csv``'s ``pano``
    column marks panoramas, which are excluded by default (the official protocol). With
    ``subtask`` (one of :data:`MSLS_SUBTASKS`), only the query and database images whose
    ``subtask_index.csv`` column of that name is true are kept, row by row as the official
    ``mapillary_sls`` val mode does: ``subtask="all"`` gives the published 740-query MSLS-val.
    """
    if subtask is not None and subtask not in MSLS_SUBTASKS:
        raise ValueError(f"subtask must be one of {MSLS_SUBTASKS} or None, got {subtask!r}")
    root = Path(root)
    database: list[ImageRecord] = []
    queries: list[ImageRecord] = []
    dropped = outside = 0
    for city in cities:
        for role, out in (("database", database), ("query", queries)):
            folder = root / subset / city / role
            post, raw = folder / "postprocessed.csv", folder / "raw.csv"
            for needed in (post, raw):
                if not needed.is_file():
                    raise DatasetLayoutError(f"{needed}: missing; expected MSLS layout <root>/{subset}/<city>/{role}/")
            panos = {}
            with open(raw, newline="") as f:
                for row in csv.DictReader(f):
                    panos[row["key"]] = _true(row.get("pano", "False"))
            keep = None if subtask is None else _subtask_rows(folder / "subtask_index.csv", subtask)
            with open(post, newline="") as f:
                for line, row in enumerate(csv.DictReader(f), start=2):
                    try:
                        key, east, north = row["key"], float(row["easting"]), float(row["northing"])
                    except (KeyError, TypeError, ValueError) as err:
                        raise DatasetLayoutError(f"{post}:{line}: cannot read key/easting/northing ({err})") from err
                    if keep is not None and (line - 2 >= len(keep) or not keep[line - 2]):
                        outside += 1
                        continue
                    if exclude_panoramas and panos.get(key, False):
                        dropped += 1
                        continue
                    night = "night" if str(row.get("night", "")).strip().lower() in ("true", "1") else "day"
                    out.append(
                        _record(
                            root,
                            Path(subset) / city / role / "images" / f"{key}.jpg",
                            (east, north),
                            f"{night}_{row.get('view_direction', '')}_{city}".lower(),
                        )
                    )
    _check_files(database + queries, root / subset)
    chosen = "" if subtask is None else f"subtask '{subtask}' ({outside} images outside it dropped); "
    return SplitManifest(
        name,
        root,
        database,
        queries,
        25.0,
        notes=[f"cities {cities}; {chosen}{dropped} panoramas excluded; positives within 25 m"],
    )


# -- Patch-NetVLAD lists + npz ---------------------------------------------------------------------
def read_patchnetvlad(
    root: str | Path, index_list: str | Path, query_list: str | Path, npz_path: str | Path, name: str | None = None
) -> SplitManifest:
    """Read ``dataset_imagenames/*_imageNames_{index,query}.txt`` with ``dataset_gt_files/*.npz``.

    The npz holds ``utmDb`` (N x 2), ``utmQ`` (M x 2) and ``posDistThr``: metres for
    Pittsburgh/Tokyo, frames for Nordland (coordinates are then (frame, frame)).
    """
    root, npz_path = Path(root), Path(npz_path)
    try:
        gt = np.load(npz_path)
        db_utm, q_utm, radius = np.asarray(gt["utmDb"]), np.asarray(gt["utmQ"]), float(gt["posDistThr"])
    except Exception as err:
        raise DatasetLayoutError(f"{npz_path}: needs arrays utmDb, utmQ and posDistThr ({err})") from err
    lists = []
    for lst in (index_list, query_list):
        lst = Path(lst)
        if not lst.is_file():
            raise DatasetLayoutError(f"{lst}: image list is missing")
        lists.append([line.strip() for line in lst.read_text().splitlines() if line.strip()])
    if len(lists[0]) != len(db_utm) or len(lists[1]) != len(q_utm):
        raise DatasetLayoutError(
            f"{npz_path}: {len(db_utm)} database and {len(q_utm)} query coordinates, but the lists name "
            f"{len(lists[0])} and {len(lists[1])} images"
        )
    database = [_record(root, n, u) for n, u in zip(lists[0], db_utm)]
    queries = [_record(root, n, u) for n, u in zip(lists[1], q_utm)]
    _check_files(database + queries, Path(index_list))
    return SplitManifest(
        name or npz_path.stem,
        root,
        database,
        queries,
        radius,
        notes=[f"{npz_path.name}: positives within {radius:g} (posDistThr)"],
    )


# -- hard-coded GT .npy (gsv-cities / MixVPR / OpenVPRLab) ----------------------------------------
def read_npy_gt(
    root: str | Path,
    db_npy: str | Path,
    q_npy: str | Path,
    gt_npy: str | Path,
    q_idx_npy: str | Path | None = None,
    allow_pickle: bool = False,
    name: str | None = None,
) -> SplitManifest:
    """Read ``<name>_dbImages.npy``, ``<name>_qImages.npy`` and a per-query positives ``.npy``.

    The ground truth is an object array (one index array per query), which numpy can only
    read with pickling enabled: pass ``allow_pickle=True`` only for files you trust.
    ``q_idx_npy`` (MSLS-val: 740 of 747 names) selects the evaluated queries. No coordinates:
    records get (0, 0) and the manifest carries ``positives``.
    """
    root = Path(root)
    for path in (db_npy, q_npy, gt_npy, q_idx_npy):
        if path is not None and not Path(path).is_file():
            raise DatasetLayoutError(f"{path}: ground-truth file is missing")
    names = {}
    for key, path in (("db", db_npy), ("q", q_npy)):
        try:
            names[key] = [str(x) for x in np.load(path)]
        except ValueError as err:
            raise DatasetLayoutError(f"{path}: not a numpy array of image paths ({err})") from err
    try:
        gt = np.load(gt_npy, allow_pickle=allow_pickle)
    except ValueError as err:
        raise DatasetLayoutError(
            f"{gt_npy}: ground truth is an object array; pass allow_pickle=True if you trust this file"
        ) from err
    query_names = names["q"]
    if q_idx_npy is not None:
        query_names = [query_names[i] for i in np.load(q_idx_npy)]
    if len(gt) != len(query_names):
        raise DatasetLayoutError(f"{gt_npy}: {len(gt)} ground-truth rows for {len(query_names)} queries")
    positives = [np.asarray(p, dtype=np.int64).ravel() for p in gt]
    bad = [i for i, p in enumerate(positives) if len(p) and (p.min() < 0 or p.max() >= len(names["db"]))]
    if bad:
        raise DatasetLayoutError(f"{gt_npy}: query {bad[0]} names database indices outside 0..{len(names['db']) - 1}")
    database = [_record(root, n, (0.0, 0.0)) for n in names["db"]]
    queries = [_record(root, n, (0.0, 0.0)) for n in query_names]
    _check_files(database + queries, Path(db_npy))
    return SplitManifest(
        name or Path(gt_npy).stem,
        root,
        database,
        queries,
        positives=positives,
        notes=[f"{Path(gt_npy).name}: precomputed positives"],
    )


# -- GSV-Cities -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlaceImage:
    """One GSV-Cities image: its file, unique place label and coordinates."""

    path: Path
    place: int
    lat: float
    lon: float


def read_gsv_cities(root: str | Path, cities: list[str], min_images: int = 4) -> list[PlaceImage]:
    """Read ``Dataframes/<city>.csv`` and ``Images/<city>/...jpg`` of GSV-Cities.

    Place labels are made unique across cities as ``city_index * 100000 + place_id``; places
    with fewer than ``min_images`` images are dropped. File names are rebuilt from the CSV
    columns as the dataset's own loader does.
    """
    root = Path(root)
    out: list[PlaceImage] = []
    for ci, city in enumerate(cities):
        table = root / "Dataframes" / f"{city}.csv"
        if not table.is_file():
            raise DatasetLayoutError(f"{table}: missing; expected GSV-Cities layout <root>/Dataframes/<city>.csv")
        with open(table, newline="") as f:
            rows = list(csv.DictReader(f))
        by_place: dict[int, list[PlaceImage]] = {}
        for line, row in enumerate(rows, start=2):
            try:
                pid = int(row["place_id"])
                name = (
                    f"{city}_{pid:07d}_{int(row['year']):04d}_{int(row['month']):02d}_"
                    f"{int(row['northdeg']):03d}_{row['lat']}_{row['lon']}_{row['panoid']}.jpg"
                )
                item = PlaceImage(root / "Images" / city / name, ci * 100000 + pid, float(row["lat"]), float(row["lon"]))
            except (KeyError, ValueError) as err:
                raise DatasetLayoutError(f"{table}:{line}: bad row ({err})") from err
            by_place.setdefault(item.place, []).append(item)
        for items in by_place.values():
            if len(items) >= min_images:
                out.extend(items)
    missing = [p.path for p in out if not p.path.is_file()]
    if missing:
        raise DatasetLayoutError(f"{root / 'Images'}: {len(missing)} images named by the CSVs are missing, first {missing[0]}")
    return out


# -- VG folder format -----------------------------------------------------------------------------
def read_vg(root: str | Path, split: str = "test", radius: float = 25.0, name: str | None = None) -> SplitManifest:
    """Read a split of the VG ``@`` folder format (see :mod:`structvpr.data.vg`)."""
    root = Path(root)
    return SplitManifest(
        name or f"{root.name}_{split}",
        root,
        read_split(root, split, "database"),
        read_split(root, split, "queries"),
        radius,
        notes=[f"VG folder format, positives within {radius:g} m"],
    )
