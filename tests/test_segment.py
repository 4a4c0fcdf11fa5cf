import numpy as np
import pytest
import torch
from PIL import Image

from structvpr.data.labels import cityscapes_grouping, load_label_map
from structvpr.segment import TorchvisionSegmenter, segment_dataset, segment_main, taxonomy_table


def _images(root, n=3):
    for i in range(n):
        path = root / "images/test/database" / f"img{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    model = TorchvisionSegmenter("lraspp_mobilenet_v3_large", 19, None)
    path = tmp_path / "seg.pth"
    torch.save(model.model.state_dict(), path)
    return str(path)


def test_segment_writes_resumes_and_reports_unreadable(tmp_path, weights, capsys):
    root = tmp_path / "ds"
    _images(root)
    (root / "images/test/database/broken.jpg").write_bytes(b"not an image")
    args = ["--root", str(root), "--model", "torchvision:lraspp_mobilenet_v3_large", "--weights", weights,
            "--device", "cpu"]
    report = segment_main(args)
    assert len(report["written"]) == 3 and len(report["failed"]) == 1
    assert "broken.jpg: cannot decode image" in report["failed"][0]
    label = load_label_map(root / "labels/test/database/img0.png", cityscapes_grouping())
    assert label.shape == (24, 40) and label.max() < 19
    again = segment_main(args)
    assert again["written"] == [] and len(again["skipped"]) == 3


def test_interrupted_run_leaves_no_partial_file(tmp_path, weights, monkeypatch):
    root = tmp_path / "ds"
    _images(root)
    model = TorchvisionSegmenter("lraspp_mobilenet_v3_large", 19, weights)
    real_save = Image.Image.save
    calls = {"n": 0}

    def crash_midway(self, fp, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            open(fp, "wb").write(b"partial")  # a half-written temporary file, then the crash
            raise KeyboardInterrupt
        return real_save(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        segment_dataset(root, model, "cityscapes", progress=False)
    monkeypatch.undo()
    written = sorted(p.name for p in (root / "labels/test/database").iterdir())
    assert written == ["img0.png"]  # neither the interrupted map nor its temporary file
    report = segment_dataset(root, model, "cityscapes", progress=False)
    assert len(report["written"]) == 2 and len(report["skipped"]) == 1


def test_taxonomy_tables():
    assert taxonomy_table("cityscapes", 19).tolist() == list(range(19))
    ade = taxonomy_table("ade20k", 150)
    assert ade[2] == 10 and ade[1] == 2 and ade[4] == 8 and ade[5] == 255  # sky, building, tree, ceiling
    with pytest.raises(ValueError, match="must predict 19 classes, this one predicts 21"):
        taxonomy_table("cityscapes", 21)


def test_missing_weights_and_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth: segmentation weight file does not exist"):
        TorchvisionSegmenter("lraspp_mobilenet_v3_large", 19, str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="images: missing"):
        segment_dataset(tmp_path, TorchvisionSegmenter("lraspp_mobilenet_v3_large", 19, None), "cityscapes")
