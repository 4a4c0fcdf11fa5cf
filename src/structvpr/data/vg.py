"""Reader for the VG ``@`` folder format, pairing every image with its label map.

Layout::

    <root>/images/<split>/{database,queries}/@east@north@zone@letter@lat@lon@pano@...@note@.jpg
    <root>/labels/<split>/{database,queries}/<same file name>        (optional, uint8 ids)

The label map of ``<root>/images/<rest>`` is ``<root>/labels/<rest>`` with the extension
kept (PNG for the synthetic world); a ``.png`` with the same stem is also accepted, since
segmenters write PNG next to JPEG photos. Only the basename is parsed, so an ``@`` in a
parent folder is harmless. When ``<folder>_images_paths.txt`` sits next to a folder (one
path per line, relative to the dataset root or to the folder's parent), it lists the
images instead of a recursive search.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from structvpr.errors import DatasetLayoutError, MissingLabelMapError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class ImageRecord:
    """One image of a split: where it is, where it was taken, and its label map."""

    path: Path
    utm: tuple[float, float]
    label_path: Path | None
    note: str = ""
    #: Panorama the image was cut from (VG field 7), "" when unknown; Tokyo 24/7 can count
    #: one hit per panorama with it.
    pano_id: str = ""


class VGName(NamedTuple):
    """The fields of a VG file name that VPR uses."""

    east: float
    north: float
    note: str
    pano_id: str


def parse_vg_name(path: str | Path) -> VGName:
    """UTM east, north, the note and the panorama id from a VG file name (basename only).

    Raises:
        DatasetLayoutError: naming the file when the name does not follow the grammar.
    """
    name = Path(path).name
    fields = name.split("@")
    if len(fields) < 4 or fields[0] != "":
        raise DatasetLayoutError(f"{path}: file name is not in the VG '@east@north@...@.ext' format")
    try:
        east, north = float(fields[1]), float(fields[2])
    except ValueError as err:
        raise DatasetLayoutError(f"{path}: cannot read UTM east/north from the file name") from err
    note = fields[14] if len(fields) > 15 else ""
    pano_id = fields[7] if len(fields) > 8 else ""
    return VGName(east, north, note, pano_id)


def _listing(folder: Path, root: Path) -> list[Path]:
    listing = folder.parent / f"{folder.name}_images_paths.txt"
    if listing.is_file():
        paths = []
        for line in listing.read_text().splitlines():
            if not line.strip():
                continue
            rel = Path(line.strip())
            candidates = [root / rel, folder.parent / rel, folder / rel]
            hit = next((c for c in candidates if c.is_file()), None)
            if hit is None:
                raise DatasetLayoutError(f"{listing}: listed image {line.strip()!r} does not exist")
            paths.append(hit)
        return paths
    return list_images(folder)


def list_images(folder: Path) -> list[Path]:
    """Every .jpg/.jpeg/.png file under ``folder``, recursively, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)


def label_map_path(image: Path, root: Path) -> Path:
    """Where the label map of ``image`` belongs: ``<root>/labels/<path under root/images (or
    root)>`` with a ``.png`` suffix (what ``structvpr segment`` writes).

    Raises:
        ValueError: ``image`` does not lie under ``root``.
    """  # noqa: D205
    rel = Path(image).relative_to(root)
    if rel.parts and rel.parts[0] == "images":
        rel = Path(*rel.parts[1:])
    return (Path(root) / "labels" / rel).with_suffix(".png")


def label_path_for(image: Path, root: Path) -> Path | None:
    """The label map of ``image``: ``<root>/labels/<path under root/images (or root)>``, same
    suffix or ``.png``; None when neither exists."""  # noqa: D205
    try:
        png = label_map_path(image, root)
    except ValueError:
        return None
    for candidate in (png.with_suffix(Path(image).suffix), png):
        if candidate.is_file():
            return candidate
    return None


def read_split(root: str | Path, split: str, role: str, require_labels: bool = False) -> list[ImageRecord]:
    """Records of ``<root>/images/<split>/<role>``, sorted, with their label maps.

    Args:
        root: Dataset root (holds ``images/``).
        split: ``train``, ``val`` or ``test``.
        role: ``database`` or ``queries``.
        require_labels: Raise if any image lacks its label map.

    Raises:
        DatasetLayoutError: the folder is missing, empty, or a name is not in the VG grammar.
        MissingLabelMapError: a label map is missing while ``require_labels`` (a FileNotFoundError).
    """
    root = Path(root)
    folder = root / "images" / split / role
    if not folder.is_dir():
        found = sorted(p.relative_to(root).as_posix() for p in root.glob("images/*/*") if p.is_dir())
        raise DatasetLayoutError(
            f"{folder}: missing; expected <root>/images/<split>/{{database,queries}}/ "
            f"(found: {found[:8] or 'nothing under images/'})"
        )
    records = []
    for path in _listing(folder, root):
        name = parse_vg_name(path)
        label = label_path_for(path, root)
        if label is None and require_labels:
            expected = label_map_path(path, root)
            raise MissingLabelMapError(f"{path}: label map is missing (expected {expected})")
        records.append(
            ImageRecord(path=path, utm=(name.east, name.north), label_path=label, note=name.note, pano_id=name.pano_id)
        )
    if not records:
        raise DatasetLayoutError(f"{folder}: split {split}/{role} holds no images")
    return records


def utm_array(records: list[ImageRecord]) -> np.ndarray:
    """(N, 2) float64 UTM coordinates of the records."""
    return np.array([r.utm for r in records], dtype=np.float64).reshape(-1, 2)
