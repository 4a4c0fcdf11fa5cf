"""DescriptorBank: one encoding per image and weights version, looked up by id, in float16 or memory-mapped."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from structvpr.bank import DescriptorBank, encode_loader
from structvpr.models import PlaceEncoder

N = 20


@pytest.fixture
def images():
    torch.manual_seed(0)
    return torch.randn(N, 3, 32, 64)


def _loader(images, requested):
    def loader(ids, key):
        requested.append(np.asarray(ids).tolist())
        items = [{key: images[i]} for i in np.asarray(ids).tolist()]
        return DataLoader(items, batch_size=4)

    return loader


@pytest.fixture
def encoder():
    torch.manual_seed(1)
    return PlaceEncoder(3).train()


def _direct(encoder, images, ids):
    with torch.no_grad():
        was = encoder.training
        out = encoder.eval().pooled(images[torch.as_tensor(ids)])
        encoder.train(was)
        return out


def test_each_image_is_encoded_once_per_version_and_looked_up_by_id(encoder, images):
    requested = []
    bank = DescriptorBank(encoder, "image")
    bank.bind(_loader(images, requested))
    first = bank.descriptors([7, 2, 5])
    assert torch.allclose(first, _direct(encoder, images, [7, 2, 5]), atol=1e-5)
    # held ids come back without encoding; only 9 and 11 are new, and the rows follow the request's order
    second = bank.descriptors([11, 5, 9, 2])
    assert requested == [[2, 5, 7], [9, 11]]
    assert bank.images_encoded == 5 and bank.ids.tolist() == [2, 5, 7, 9, 11]
    assert torch.allclose(second, _direct(encoder, images, [11, 5, 9, 2]), atol=1e-5)
    assert bank.descriptors([2, 5, 7, 9, 11]) is bank.array  # the whole held set, in order: no copy
    assert encoder.training  # the bank's passes restore train mode
    bank.invalidate()  # the weights moved
    assert bank.array is None and len(bank.ids) == 0
    bank.descriptors([2])
    assert requested[-1] == [2] and bank.version == 1


def test_encode_computes_now_keeps_nothing_and_takes_another_encoder(encoder, images):
    bank = DescriptorBank(encoder, "image")
    bank.bind(_loader(images, []))
    other = PlaceEncoder(3)
    out = bank.encode([3, 1], encoder=other)
    assert torch.allclose(out, _direct(other, images, [3, 1]), atol=1e-5)
    assert bank.array is None and len(bank.ids) == 0


def test_float16_storage_halves_the_array_and_keeps_the_values(encoder, images):
    bank = DescriptorBank(encoder, "image")
    bank.bind(_loader(images, []))
    bank.set_storage(torch.float16)
    out = bank.descriptors(range(N))
    assert out.dtype == torch.float16
    assert torch.allclose(out.float(), _direct(encoder, images, list(range(N))), atol=2e-3)


def test_memory_mapped_storage_merges_on_disk_and_leaves_no_file(encoder, images, tmp_path):
    bank = DescriptorBank(encoder, "image")
    bank.bind(_loader(images, []))
    bank.set_storage(torch.float32, tmp_path / "mm")
    bank.descriptors([9, 4])
    out = bank.descriptors([1, 4, 15])  # merged with the held rows, on disk
    assert torch.allclose(out, _direct(encoder, images, [1, 4, 15]), atol=1e-5)
    assert torch.allclose(bank.array, _direct(encoder, images, [1, 4, 9, 15]), atol=1e-5)
    assert list((tmp_path / "mm").iterdir()) == []  # files are unlinked once mapped


def test_misuse_gets_clear_errors(encoder, images):
    bank = DescriptorBank(encoder, "label", name="teacher")
    with pytest.raises(RuntimeError, match="teacher descriptor bank is not bound"):
        bank.descriptors([0])
    with pytest.raises(ValueError, match="float32 or float16"):
        bank.set_storage(torch.float64)
    short = [{"image": images[0]}]
    with pytest.raises(RuntimeError, match="the loader gave 1 items for 2 rows"):
        encode_loader(encoder, DataLoader(short), rows=2)
