import hashlib
import json

import pytest

from structvpr.data import synthetic
from structvpr.data.vg import parse_vg_name, read_split


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    synthetic.generate(a, "tiny", seed=3, progress=False)
    synthetic.generate(b, "tiny", seed=3, progress=False)
    assert _digest(a) == _digest(b)
    c = tmp_path / "c"
    synthetic.generate(c, "tiny", seed=4, progress=False)
    assert _digest(a) != _digest(c)


def test_layout_manifest_and_labels(tiny_world):
    manifest = json.loads((tiny_world / "manifest.json").read_text())
    assert manifest["preset"] == "tiny" and manifest["seed"] == 0
    spec = synthetic.PRESETS["tiny"]
    for split in synthetic.SPLITS:
        db = read_split(tiny_world, split, "database", require_labels=True)
        qs = read_split(tiny_world, split, "queries", require_labels=True)
        assert len(db) == manifest["counts"][split]["database"]
        assert len(qs) == spec.splits[split].num_queries
    assert manifest["counts"]["total"] == len(manifest["images"])
    assert (tiny_world / "contact_sheet.png").is_file()
    # database visits are never at night or in fog; query visits often are
    night = {
        r: sum(
            m["condition"]["illumination"] == "night" or m["condition"]["fog"] > 0 for m in manifest["images"] if m["role"] == r
        )
        for r in ("database", "queries")
    }
    assert night["database"] == 0 and night["queries"] >= 10


def test_coordinates_follow_the_route(tiny_world):
    db = read_split(tiny_world, "train", "database")
    east, north, *_ = parse_vg_name(db[1].path)
    e0, n0, *_ = parse_vg_name(db[0].path)
    step = synthetic.PRESETS["tiny"].splits["train"].db_step_m
    assert ((east - e0) ** 2 + (north - n0) ** 2) ** 0.5 == pytest.approx(step, abs=0.02)


def test_label_noise_corrupts_more_maps_and_night_fails_more(tmp_path):
    clean = synthetic.generate(tmp_path / "clean", "tiny", seed=0, label_noise=0.0, progress=False)
    noisy = synthetic.generate(tmp_path / "noisy", "tiny", seed=0, label_noise=0.4, progress=False)
    assert all(m["label_corruption"] is None for m in clean["images"])
    bad = [m for m in noisy["images"] if m["label_corruption"]]
    assert len(bad) > 0.15 * len(noisy["images"])

    def rate(kind):
        items = [m for m in noisy["images"] if m["condition"]["illumination"] == kind]
        return sum(m["label_corruption"] is not None for m in items) / max(1, len(items))

    assert rate("night") > rate("day")


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synthetic._render

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_render", failing)
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate(tmp_path / "world", "tiny", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_and_rejects_bad_arguments(tmp_path):
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="exists"):
        synthetic.generate(tmp_path / "exists", "tiny", progress=False)
    with pytest.raises(ValueError, match="preset must be one of"):
        synthetic.generate(tmp_path / "x", "huge", progress=False)
    with pytest.raises(ValueError, match="label_noise"):
        synthetic.generate(tmp_path / "x", "tiny", label_noise=1.5, progress=False)
