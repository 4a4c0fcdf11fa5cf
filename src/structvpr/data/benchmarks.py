"""Named evaluation benchmarks: which reader, which threshold, which denominator.

Every variant excludes queries without any positive from the denominator and reports how
many it excluded (``num_excluded``), so the published variants can be told apart in a
results table. Paths are relative to the dataset root given with the name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from structvpr.data.formats import SplitManifest, read_mat_dbstruct, read_msls, read_patchnetvlad, read_vg


def msls_val(root: str | Path) -> SplitManifest:
    """MSLS val, official protocol: native layout ``train_val/{cph,sf}``, panoramas excluded,
    positives within 25 m, queries without a positive dropped (740 queries on the full set)."""  # noqa: D205
    return read_msls(root, ["cph", "sf"], name="msls_val")


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


def tokyo247(root: str | Path) -> SplitManifest:
    """Tokyo 24/7 in VG folders ``images/test`` (315 queries), 25 m, every database cutout
    counted (the VG convention; NetVLAD's one-hit-per-panorama is not applied)."""  # noqa: D205
    return read_vg(root, "test", 25.0, name="tokyo247")


def nordland(root: str | Path) -> SplitManifest:
    """Nordland, Patch-NetVLAD split: summer database, winter queries (27,592 each), positives
    within +-10 frames (``dataset_imagenames/nordland_imageNames_{index,query}.txt`` and
    ``dataset_gt_files/nordland.npz``)."""  # noqa: D205
    root = Path(root)
    return read_patchnetvlad(root, root / "dataset_imagenames/nordland_imageNames_index.txt",
                             root / "dataset_imagenames/nordland_imageNames_query.txt",
                             root / "dataset_gt_files/nordland.npz", name="nordland")  # fmt: skip


def nordland_vg(root: str | Path) -> SplitManifest:
    """Nordland as VPR-datasets-downloader writes it: VG folders ``images/test``, dummy UTM north
    = frame x 2.38 m, so 25 m is about +-10 frames."""  # noqa: D205
    return read_vg(root, "test", 25.0, name="nordland_vg")


BENCHMARKS: dict[str, Callable[[str | Path], SplitManifest]] = {
    f.__name__: f for f in (msls_val, msls_val_vg, pitts30k_test, pitts250k_test, tokyo247, nordland, nordland_vg)
}


def load_benchmark(name: str, root: str | Path) -> SplitManifest:
    """The manifest of a named benchmark under ``root``."""
    if name not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {sorted(BENCHMARKS)}, got {name!r}")
    return BENCHMARKS[name](root)
