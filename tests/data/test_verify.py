"""The up-front decode check: truncation found, every bad file named, a second run decodes nothing."""

import numpy as np
import pytest
from PIL import Image

from structvpr.data import verify
from structvpr.data.datamodule import VPRDataModule
from structvpr.data.labels import cityscapes_grouping
from structvpr.data.verify import verify_files
from structvpr.errors import LabelMapError


def _write(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_truncated_missing_and_garbage_files_are_all_named_in_order(tmp_path):
    paths = _write(tmp_path / "img", 6)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])
    paths[4].write_bytes(b"garbage")
    paths[5].unlink()
    bad = verify_files(paths, workers=2, progress=False)
    assert [p for p, _ in bad] == [str(paths[i]) for i in (1, 4, 5)]
    assert "truncated" in bad[0][1] and bad[2][1] == "missing"


def test_a_second_run_decodes_only_files_that_changed(tmp_path, monkeypatch):
    paths = _write(tmp_path / "img", 8)
    decoded = []
    original = verify._check_image
    monkeypatch.setattr(verify, "_check_image", lambda p: decoded.append(p) or original(p))
    assert verify_files(paths, progress=False) == []
    assert len(decoded) == 8
    decoded.clear()
    assert verify_files(paths, progress=False) == []
    assert decoded == []  # all cached
    paths[3].write_bytes(b"now broken")  # another size: decoded again
    bad = verify_files(paths, progress=False)
    assert decoded == [str(paths[3])] and [p for p, _ in bad] == [str(paths[3])]
    decoded.clear()
    verify_files(paths, progress=False)
    assert decoded == [str(paths[3])]  # bad files are never cached


def test_label_maps_are_checked_against_the_taxonomy(tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.fromarray(np.full((8, 8), 7, dtype=np.uint8)).save(good)
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(bad)
    out = verify_files([good, bad], "label", grouping=cityscapes_grouping(), progress=False)
    assert out == [(str(bad), out[0][1])] and "outside the taxonomy" in out[0][1]


def test_a_bad_val_label_map_stops_fit_before_any_step_without_image_caching(tiny_world, tmp_path):
    import shutil

    import pytorch_lightning as pl

    from structvpr import SegTeacher
    from structvpr.callbacks import HardNegativeMining

    root = tmp_path / "world"
    shutil.copytree(tiny_world, root)
    victim = sorted((root / "labels/val/queries").iterdir())[2]
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(victim)
    dm = VPRDataModule(
        root=str(root), image_size=(32, 64), batch_size=4, synthetic_preset=None, cache_images=False, num_workers=0
    )
    steps = []

    class Steps(pl.Callback):
        def on_train_batch_start(self, *args):
            steps.append(1)

    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
        callbacks=[HardNegativeMining(), Steps()],
    )
    with pytest.raises(LabelMapError, match=rf"val set: 1 unreadable label map\(s\):\n  {victim}: .*outside the taxonomy"):
        trainer.fit(SegTeacher(), datamodule=dm)
    assert steps == [] and not list(tmp_path.rglob("*.ckpt"))
