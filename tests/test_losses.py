import pytest
import torch

from structvpr.losses import distillation_loss, triplet_margin_loss, weighted_mean


def test_triplet_known_answer_sums_over_negatives():
    q = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.6, 0.8]])  # |q - p| = sqrt(0.16 + 0.64) = 0.894
    negs = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]]])  # 1.414, 0, 2
    loss = triplet_margin_loss(q, p, negs, margin=0.1)
    d_p = (0.8) ** 0.5
    want = max(0, d_p - 2**0.5 + 0.1) + max(0, d_p - 0 + 0.1) + max(0, d_p - 2 + 0.1)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(want, abs=1e-6)


def test_distillation_known_answer_and_teacher_gets_no_gradient():
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], requires_grad=True)
    t = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]], requires_grad=True)
    loss = distillation_loss(s, t)
    assert loss.tolist() == [pytest.approx(1.0)]  # (2 + 0) / 2 images
    loss.sum().backward()
    assert t.grad is None and s.grad is not None


def test_weighted_mean():
    v = torch.tensor([1.0, 2.0, 3.0])
    assert weighted_mean(v).item() == pytest.approx(2.0)
    assert weighted_mean(v, torch.tensor([0.0, 1.0, 0.5])).item() == pytest.approx((2 + 1.5) / 3)


def test_distillation_loss_weights_each_image_of_a_tuple():
    s = torch.zeros(2, 3, 2)
    t = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], [[0.0, 0.0], [3.0, 0.0], [0.0, 1.0]]])
    # squared distances per image: [1, 4, 2] and [0, 9, 1]
    assert distillation_loss(s, t).tolist() == pytest.approx([7 / 3, 10 / 3])
    v = torch.tensor([[1.0, 0.0, 2.0], [0.5, 0.0, 1.0]])
    assert distillation_loss(s, t, v).tolist() == pytest.approx([5 / 3, 1 / 3])
