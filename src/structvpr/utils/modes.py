"""Run a module in eval mode for a block and give it back its mode afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


@contextmanager
def eval_mode(module: M) -> Iterator[M]:
    """Run the block with ``module`` in eval mode; its train mode comes back afterwards if it was on."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
