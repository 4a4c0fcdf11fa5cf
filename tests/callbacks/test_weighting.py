import math

import pytest
import torch

from structvpr.callbacks.weighting import (
    CONSISTENT,
    NOISY,
    TEACHABLE,
    SampleWeighting,
    mean_one,
    partition,
    sample_weights,
)


def test_groups_and_weights_known_answers():
    r_t = torch.tensor([1, 1, 2, 5, 6, 100, 3])
    r_s = torch.tensor([1, 10, 1, 5, 1, 1, 101])
    groups = partition(r_t, r_s, tau=5)
    assert groups.tolist() == [CONSISTENT, TEACHABLE, CONSISTENT, CONSISTENT, NOISY, NOISY, TEACHABLE]
    w = sample_weights(r_t, r_s, tau=5, alpha=1.0)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    want = [0.5, sig(math.log(10)), sig(math.log(0.5)), 0.5, 0.0, 0.0, sig(math.log(101 / 3))]
    assert w.tolist() == pytest.approx(want, abs=1e-6)
    # by construction: teachable > 0.5, consistent <= 0.5
    assert (w[groups == TEACHABLE] > 0.5).all() and (w[groups == CONSISTENT] <= 0.5).all()


def test_alpha_sharpens():
    r_t, r_s = torch.tensor([1]), torch.tensor([4])
    assert sample_weights(r_t, r_s, alpha=4.0).item() > sample_weights(r_t, r_s, alpha=1.0).item()
    assert sample_weights(r_t, r_s, alpha=1.0).item() == pytest.approx(0.8)  # sigmoid(ln 4) = 4/5


def test_bad_constants_raise():
    with pytest.raises(ValueError, match="tau must be >= 1"):
        SampleWeighting(tau=0)
    with pytest.raises(ValueError, match="max_rank must be >= tau"):
        SampleWeighting(tau=10, max_rank=5)
    with pytest.raises(ValueError, match="ranks must be 'subepoch' or 'global'"):
        SampleWeighting(ranks="all")


def test_mean_one_rescales_and_keeps_noisy_at_zero():
    w = mean_one(torch.tensor([0.0, 0.5, 0.25, 0.25]))
    assert w.tolist() == [0.0, 2.0, 1.0, 1.0] and w.mean().item() == 1.0
    assert mean_one(torch.zeros(3)).tolist() == [0.0, 0.0, 0.0]

