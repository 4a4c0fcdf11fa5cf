"""Training geometry on photo-shaped (4:3) and 2:1 images: crops keep the source aspect, labels follow."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode, RandAugment

from structvpr.data.datasets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageDataset,
    JointRandAugment,
    SourceAspectResizedCrop,
    joint_transform,
)
from structvpr.data.labels import IGNORE_ID, cityscapes_grouping
from structvpr.data.vg import ImageRecord


@pytest.mark.parametrize(("source", "target"), [((480, 640), (480, 640)), ((480, 640), (48, 64)), ((320, 640), (48, 96))])
def test_crops_vary_keep_the_source_aspect_and_the_evaluation_scale(source, target):
    torch.manual_seed(0)
    h, w = source
    inputs = [tv_tensors.Image(torch.zeros(3, h, w, dtype=torch.uint8)), tv_tensors.Mask(torch.zeros(h, w))]
    crop = joint_transform(target, train=True, crop_scale=0.8).transforms[0]
    assert isinstance(crop, SourceAspectResizedCrop)
    boxes = [crop.make_params(inputs) for _ in range(200)]
    assert len({tuple(b.values()) for b in boxes}) > 100  # real augmentation: the box moves and resizes
    eval_sy, eval_sx = target[0] / h, target[1] / w  # evaluation resizes the full frame
    for b in boxes:
        assert b["width"] / b["height"] == pytest.approx(w / h, rel=0.02)  # the source's own aspect
        assert 0 <= b["top"] <= h - b["height"] and 0 <= b["left"] <= w - b["width"]
        sy, sx = target[0] / b["height"], target[1] / b["width"]
        # the same anisotropy as evaluation (none for a 4:3 target), zoomed in by at most 1/sqrt(0.8)
        assert sx / sy == pytest.approx(eval_sx / eval_sy, rel=0.02)
        assert 1 - 1e-3 <= sy / eval_sy <= 0.8**-0.5 + 0.02
    out = joint_transform(target, train=True, crop_scale=0.8)(*inputs)
    assert tuple(out[0].shape[-2:]) == target == tuple(out[1].shape[-2:])


def test_default_training_geometry_is_the_evaluation_resize():
    steps = [type(t).__name__ for t in joint_transform((48, 64), train=True).transforms]
    assert steps == ["Resize", "ColorJitter", "ToDtype", "Normalize"]
    assert [type(t).__name__ for t in joint_transform((48, 64), train=False).transforms] == ["Resize", "ToDtype", "Normalize"]


def test_cropped_label_maps_follow_their_rgb_in_a_dataset(tmp_path):
    # 640x480 photos whose grey level encodes the label id of every pixel (vertical bands).
    grouping = cityscapes_grouping()
    ids = np.array([0, 2, 8, 10, 5, 0, 2, 8], dtype=np.uint8)  # road, building, vegetation, sky, pole, ...
    records = []
    for k in range(3):
        band = np.repeat(np.roll(ids, k), 80)  # (640,)
        label = np.broadcast_to(band, (480, 640)).copy()
        grey = (label.astype(np.uint8) * 20)[..., None].repeat(3, 2)
        Image.fromarray(grey).save(tmp_path / f"{k}.png")
        Image.fromarray(label).save(tmp_path / f"{k}_label.png")
        records.append(ImageRecord(tmp_path / f"{k}.png", (0.0, 0.0), tmp_path / f"{k}_label.png"))
    torch.manual_seed(0)
    dataset = ImageDataset(
        records, [], joint_transform((48, 64), train=True, photometric=False, crop_scale=0.5), grouping, with_labels=True
    )
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    mismatched = []
    for _ in range(5):
        for i in range(3):
            image, onehot = dataset.load(i)
            grey = ((image * std + mean)[0] * 255 / 20).round().long().clamp(0, 18)
            expected = grouping.one_hot(grey.to(torch.uint8))
            agree = (expected == onehot).all(0).float().mean().item()
            assert agree > 0.9, agree  # only resampled band edges may differ
            other, _ = dataset.load(i)  # another draw's view: its crop does not match this label map
            grey = ((other * std + mean)[0] * 255 / 20).round().long().clamp(0, 18)
            mismatched.append((grouping.one_hot(grey.to(torch.uint8)) == onehot).all(0).float().mean().item())
    assert min(mismatched) < 0.9  # so the check above can fail


def _coded_pair(h=48, w=64):
    """An RGB image whose every channel holds the label id of its pixel (ids 1..18, never the fill 0)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 19, (h // 8, w // 8), generator=gen).repeat_interleave(8, 0).repeat_interleave(8, 1)
    return tv_tensors.Image(ids.to(torch.uint8).expand(3, h, w).clone()), tv_tensors.Mask(ids.to(torch.uint8))


def test_joint_rand_augment_moves_the_label_map_exactly_with_its_image():
    image, mask = _coded_pair()
    # nearest for the RGB too, so that a moved pixel keeps its id in both; only the fill differs (0 vs 255)
    aug = JointRandAugment(num_ops=2, magnitude=15, interpolation=InterpolationMode.NEAREST)
    # geometric operations only here: a photometric one would change the RGB values the check reads
    aug._AUGMENTATION_SPACE = {k: v for k, v in aug._AUGMENTATION_SPACE.items() if k in JointRandAugment.GEOMETRIC}
    moved = 0
    for seed in range(40):
        torch.manual_seed(seed)
        out_image, out_mask = aug(image, mask)
        inside = out_mask != IGNORE_ID
        moved += int(not torch.equal(out_mask, mask))
        assert torch.equal(out_image[0][inside], out_mask[inside])  # every labelled pixel sits under its RGB pixel
        assert torch.all(out_image[0][~inside] == 0)  # the area moved in from outside: black RGB, ignored labels
    assert moved >= 35


def test_joint_rand_augment_draws_what_torchvision_draws_and_photometric_only_never_moves_labels():
    image, mask = _coded_pair()
    for seed in range(20):
        torch.manual_seed(seed)
        ours = JointRandAugment(3, 15, interpolation=InterpolationMode.BILINEAR)(image)
        torch.manual_seed(seed)
        theirs = RandAugment(num_ops=3, magnitude=15, interpolation=InterpolationMode.BILINEAR)(image)
        assert torch.equal(ours, theirs)
    photometric = JointRandAugment(3, 15, geometric=False)
    assert not set(photometric._AUGMENTATION_SPACE) & set(JointRandAugment.GEOMETRIC)
    for seed in range(20):
        torch.manual_seed(seed)
        assert torch.equal(photometric(image, mask)[1], mask)
    with pytest.raises(TypeError, match="one Image and at most one Mask"):
        photometric(image, image)
