import numpy as np
import pytest
import torch
from PIL import Image

from structvpr.data.labels import ClassGrouping, LabelMapError, cityscapes_grouping, load_label_map


def test_default_grouping_has_five_channels_in_design_order():
    g = cityscapes_grouping()
    assert g.channel_groups == ("flat", "construction", "object", "nature", "sky")
    assert g.num_channels == 5


def test_one_hot_known_answers():
    g = cityscapes_grouping()
    # road, building, pole, vegetation / sky, car (dynamic), ignore, fence
    label = torch.tensor([[0, 2, 5, 8], [10, 13, 255, 4]])
    onehot = g.one_hot(label)
    assert onehot.shape == (5, 2, 4)
    expected_channel = [[0, 1, 2, 3], [4, -1, -1, 1]]
    for r in range(2):
        for c in range(4):
            want = torch.zeros(5)
            if expected_channel[r][c] >= 0:
                want[expected_channel[r][c]] = 1
            assert torch.equal(onehot[:, r, c], want), (r, c)


def test_one_hot_batched_matches_single():
    g = cityscapes_grouping()
    labels = torch.randint(0, 19, (3, 6, 7))
    assert torch.equal(g.one_hot(labels)[1], g.one_hot(labels[1]))


def test_dynamic_can_be_kept_as_a_channel():
    g = ClassGrouping(zero_groups=())
    assert g.num_channels == 6
    assert g.one_hot(torch.tensor([[13]]))[5, 0, 0] == 1


def test_grouping_rejects_unknown_class_and_duplicates():
    with pytest.raises(ValueError, match="unknown class 'tree'"):
        ClassGrouping(groups={"nature": ("tree",)}, zero_groups=())
    with pytest.raises(ValueError, match="'road' is in groups"):
        ClassGrouping(groups={"a": ("road",), "b": ("road",)}, zero_groups=())


def test_label_outside_taxonomy_names_the_file(tmp_path):
    path = tmp_path / "bad_map.png"
    Image.fromarray(np.array([[0, 1], [19, 200]], dtype=np.uint8)).save(path)
    with pytest.raises(LabelMapError, match=r"bad_map\.png: label ids \[19, 200\] are outside the taxonomy"):
        load_label_map(path, cityscapes_grouping())


def test_missing_and_rgb_label_maps_name_the_file(tmp_path):
    with pytest.raises(LabelMapError, match=r"nothere\.png: label map is missing"):
        load_label_map(tmp_path / "nothere.png")
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(rgb)
    with pytest.raises(LabelMapError, match=r"rgb\.png: label map must be single-channel"):
        load_label_map(rgb)
