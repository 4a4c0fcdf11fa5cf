from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from structvpr.data.datasets import IMAGENET_MEAN, IMAGENET_STD
from structvpr.data.labels import cityscapes_grouping, load_label_map
from structvpr.errors import ImageReadError
from structvpr.segment import TorchvisionSegmenter, segment_dataset, segment_main, taxonomy_table


def _images(root, n=3, shape=(24, 40)):
    for i in range(n):
        path = root / "images/test/database" / f"img{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (*shape, 3), dtype=np.uint8)).save(path)


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
    args = ["--root", str(root), "--model", "torchvision:lraspp_mobilenet_v3_large", "--weights", weights, "--device", "cpu"]
    # every readable image gets its map, and the command fails naming the unreadable one
    with pytest.raises(ImageReadError, match=r"1 image\(s\) could not be read.*\n  .*broken.jpg: cannot decode"):
        segment_main(args)
    label = load_label_map(root / "labels/test/database/img0.png", cityscapes_grouping())
    assert label.shape == (24, 40) and label.max() < 19
    (root / "images/test/database/broken.jpg").unlink()
    again = segment_main(args)
    assert again["written"] == [] and len(again["skipped"]) == 3 and again["failed"] == []


def test_resume_redoes_maps_that_do_not_decode_or_have_another_size_and_cleans_temporaries(tmp_path, weights):
    root = tmp_path / "ds"
    _images(root, n=4)
    model = TorchvisionSegmenter("lraspp_mobilenet_v3_large", 19, weights)
    segment_dataset(root, model, "cityscapes", progress=False)
    maps = root / "labels/test/database"
    good = (maps / "img3.png").read_bytes()
    data = (maps / "img0.png").read_bytes()
    (maps / "img0.png").write_bytes(data[: len(data) // 2])  # truncated
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(maps / "img1.png")  # another size than its image
    (maps / ".img2.4242.tmp.png").write_bytes(b"partial")  # left by a killed run
    report = segment_dataset(root, model, "cityscapes", progress=False)
    assert sorted(Path(p).name for p in report["redone"]) == ["img0.png", "img1.png"]
    assert len(report["written"]) == 2 and len(report["skipped"]) == 2
    assert [Path(p).name for p in report["cleaned"]] == [".img2.4242.tmp.png"]
    assert sorted(p.name for p in maps.iterdir()) == ["img0.png", "img1.png", "img2.png", "img3.png"]
    assert load_label_map(maps / "img1.png").shape == (24, 40) and (maps / "img3.png").read_bytes() == good


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
    model = TorchvisionSegmenter("lraspp_mobilenet_v3_large", 19, None)
    with pytest.raises(FileNotFoundError, match="holds no .jpg/.jpeg/.png images"):
        segment_dataset(tmp_path, model, "cityscapes")
    with pytest.raises(FileNotFoundError, match="nowhere: dataset root does not exist"):
        segment_dataset(tmp_path / "nowhere", model, "cityscapes")


def test_segformer_checkpoint_from_a_local_folder(tmp_path):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    config = SegformerConfig(
        num_labels=150,
        hidden_sizes=[8, 16, 16, 16],
        decoder_hidden_size=16,
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 1, 1],
    )
    folder = tmp_path / "segformer-ade"
    SegformerForSemanticSegmentation(config).save_pretrained(folder)
    root = tmp_path / "ds"
    _images(root, shape=(64, 96))  # SegFormer's first patch embedding needs more than 24 x 40 pixels
    args = ["--root", str(root), "--model", f"segformer:{folder}", "--taxonomy", "ade20k", "--device", "cpu"]
    report = segment_main(args)
    assert len(report["written"]) == 3 and report["failed"] == []
    ids = np.array(Image.open(root / "labels/test/database/img1.png"))
    assert ids.shape == (64, 96)  # SegFormer predicts at 1/4 resolution; maps keep the image size
    assert set(np.unique(ids).tolist()) <= set(taxonomy_table("ade20k", 150).tolist())
    # The map is the checkpoint's own prediction, upsampled, through the ADE20K table.
    from structvpr.segment import SegformerSegmenter

    model = SegformerSegmenter(str(folder)).eval()
    rgb = np.array(Image.open(root / "images/test/database/img1.jpg").convert("RGB"))
    x = (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(
        IMAGENET_STD
    )[:, None, None]
    with torch.no_grad():
        logits = torch.nn.functional.interpolate(model(x[None]), size=(64, 96), mode="bilinear", align_corners=False)
    assert (taxonomy_table("ade20k", 150)[logits.argmax(1)[0].numpy()] == ids).all()
    assert segment_main(args)["skipped"] and segment_main(args)["written"] == []
    with pytest.raises(FileNotFoundError, match="missing-folder: SegFormer checkpoint folder does not exist"):
        segment_main(["--root", str(root), "--model", f"segformer:{tmp_path / 'missing-folder'}"])


def test_native_layout_maps_land_where_the_readers_look(tmp_path, weights):
    from structvpr.data.benchmarks import load_benchmark
    from tests.data.test_formats import _write_pitts

    _write_pitts(tmp_path, mat_name="pitts30k_train.mat")  # 000/..., queries_real/000/..., datasets/*.mat
    (tmp_path / "000/unlisted.jpg").write_bytes((tmp_path / "000/000000_pitch1_yaw1.jpg").read_bytes())
    base = ["--root", str(tmp_path), "--model", "torchvision:lraspp_mobilenet_v3_large", "--weights", weights, "--device", "cpu"]
    report = segment_main([*base, "--split", "pitts30k_train"])
    assert len(report["written"]) == 3  # the split's 2 database images and 1 query, not unlisted.jpg
    manifest = load_benchmark("pitts30k_train", tmp_path)
    assert all(r.label_path is not None for r in manifest.database + manifest.queries)
    assert manifest.queries[0].label_path == tmp_path / "labels/queries_real/000/000005_pitch1_yaw1.png"
    # Without --split, every image under the root (no images/ folder here), labels/ excepted.
    again = segment_main(base)
    assert [Path(p).name for p in again["written"]] == ["unlisted.png"] and len(again["skipped"]) == 3
