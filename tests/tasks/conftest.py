import pytest
import pytorch_lightning as pl

from structvpr.callbacks import HardNegativeMining
from structvpr.tasks import SegTeacher, StructVPRStudent
from tests.tasks.helpers import _dm, _trainer


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


