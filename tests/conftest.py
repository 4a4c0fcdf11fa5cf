import os
import tempfile
from pathlib import Path

import pytest
import pytorch_lightning as pl

from structvpr.callbacks import HardNegativeMining
from structvpr.data import synthetic
from structvpr.tasks import SegTeacher, StructVPRStudent
from tests.tasks.helpers import _dm, _trainer


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("STRUCTVPR_CACHE", str(tmp_path / "structvpr-cache"))  # verified-file caches


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """A tiny synthetic world (32x64 images), generated once per test session."""
    root = tmp_path_factory.mktemp("world") / "tiny"
    synthetic.generate(root, "tiny", seed=0, label_noise=0.2, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny43_world(tmp_path_factory) -> Path:
    """A tiny synthetic world in the 4:3 shape of Pittsburgh and MSLS photos (48x64 images)."""
    root = tmp_path_factory.mktemp("world43") / "tiny43"
    synthetic.generate(root, "tiny43", seed=0, label_noise=0.2, progress=False)
    return root


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def pytest_configure(config):
    os.environ.setdefault("WANDB_MODE", "offline")
    # Session fixtures run before the per-test environment: their caches go to a temporary folder too.
    os.environ.setdefault("STRUCTVPR_CACHE", tempfile.mkdtemp(prefix="structvpr-cache-"))


@pytest.fixture(scope="session")
def trained(tiny_world, tmp_path_factory):
    """Checkpoints of a briefly trained teacher and RGB baseline on the tiny world."""
    tmp = tmp_path_factory.mktemp("trained")
    out = {}
    for name, model in (("teacher", SegTeacher()), ("baseline", StructVPRStudent())):
        pl.seed_everything(0)
        trainer = _trainer(tmp / name, enable_checkpointing=False, callbacks=[HardNegativeMining()])
        trainer.fit(model, datamodule=_dm(tiny_world))
        path = tmp / f"{name}.ckpt"
        trainer.save_checkpoint(path)
        out[name] = str(path)
    return out
