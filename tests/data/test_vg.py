import shutil

import numpy as np
import pytest
from PIL import Image

from structvpr.data.datasets import ImageReadError, load_rgb
from structvpr.data.vg import DatasetLayoutError, parse_vg_name, read_split

NAME = "@0585012.50@4477001.25@17@T@40.44@-79.99@pano1@03@090@000@@@20200101_120000@night_sun@.jpg"


def test_parse_basename_only_even_with_at_in_parent(tmp_path):
    path = tmp_path / "odd@folder@1@2" / NAME
    assert parse_vg_name(path) == (585012.5, 4477001.25, "night_sun", "pano1")


def test_bad_name_is_named_in_error(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"photo\.jpg: file name is not in the VG"):
        parse_vg_name(tmp_path / "photo.jpg")
    with pytest.raises(DatasetLayoutError, match="cannot read UTM"):
        parse_vg_name(tmp_path / "@east@north@.jpg")


def _write(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(folder / n)


def test_images_paths_txt_is_honoured(tmp_path):
    names = [f"@{100 + i:010.2f}@{200:010.2f}@17@T@@@p{i}@@@@@@@@.jpg" for i in range(3)]
    _write(tmp_path / "images/test/database", names)
    (tmp_path / "images/test/database_images_paths.txt").write_text(
        f"images/test/database/{names[2]}\nimages/test/database/{names[0]}\n"
    )
    records = read_split(tmp_path, "test", "database")
    assert [r.utm[0] for r in records] == [102.0, 100.0]
    (tmp_path / "images/test/database_images_paths.txt").write_text("images/test/database/gone.jpg\n")
    with pytest.raises(DatasetLayoutError, match="gone.jpg' does not exist"):
        read_split(tmp_path, "test", "database")


def test_wrong_layout_and_empty_split_errors(tmp_path):
    _write(tmp_path / "test/database", ["a.jpg"])  # images/ level missing
    with pytest.raises(DatasetLayoutError, match=r"images/test/database: missing; expected <root>/images"):
        read_split(tmp_path, "test", "database")
    (tmp_path / "images/val/queries").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="split val/queries holds no images"):
        read_split(tmp_path, "val", "queries")


def test_missing_label_map_names_the_image(tiny_world, tmp_path):
    root = tmp_path / "w"
    shutil.copytree(tiny_world, root)
    victim = sorted((root / "labels/val/queries").iterdir())[3]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{victim.name}: label map is missing"):
        read_split(root, "val", "queries", require_labels=True)
    records = read_split(root, "val", "queries")
    assert sum(r.label_path is None for r in records) == 1


def test_corrupt_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageReadError, match=r"broken\.jpg: cannot decode image"):
        load_rgb(bad)
    with pytest.raises(ImageReadError, match=r"absent\.jpg: image is missing"):
        load_rgb(tmp_path / "absent.jpg")
