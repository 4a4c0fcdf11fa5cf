"""Fine-tune an exported student on your own images in the VG ``@`` folder format, then export it again.

Your data: ``ROOT/images/{train,val}/{database,queries}/@east@north@...@.jpg`` (the file names
carry UTM coordinates; see the README). No label maps are needed to fine-tune the RGB student:
training tuples are mined with the current model in sub-epochs (descriptor-nearest GPS
positive, hardest negatives), validation reports Recall@N, and the best weights are exported
as a plain :class:`~structvpr.StructVPRStudent` checkpoint.

    python examples/finetune_on_folders.py --ckpt student.ckpt --root MY_DATA --image-size 480 640 \\
        --epochs 5 --out runs/finetune
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytorch_lightning as pl

from structvpr import StructVPRStudent
from structvpr.callbacks import HardNegativeMining
from structvpr.data import VPRDataModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="the exported student to start from")
    parser.add_argument("--root", required=True, help="dataset root with images/train and images/val")
    parser.add_argument("--image-size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--out", default="runs/finetune")
    ns = parser.parse_args()

    start = StructVPRStudent.load_from_checkpoint(ns.ckpt, map_location="cpu", weights_only=True)
    model = StructVPRStudent(**{**start.student_hparams(), "lr": ns.lr})
    model.encoder.load_state_dict(start.encoder.state_dict())
    data = VPRDataModule(
        root=ns.root, image_size=tuple(ns.image_size), with_labels=False, synthetic_preset=None, batch_size=4, num_workers=0
    )
    best = pl.callbacks.ModelCheckpoint(dirpath=Path(ns.out) / "checkpoints", monitor="val/R@1", mode="max")
    trainer = pl.Trainer(
        max_epochs=ns.epochs,
        logger=False,
        default_root_dir=ns.out,
        enable_progress_bar=False,
        callbacks=[HardNegativeMining(), best],
    )
    trainer.fit(model, datamodule=data)
    tuned = StructVPRStudent.load_from_checkpoint(best.best_model_path, map_location="cpu", weights_only=True)
    path = tuned.export_student(Path(ns.out) / "student.ckpt")
    print(f"best val/R@1 {float(best.best_model_score):.1f}; exported {path}")


if __name__ == "__main__":
    main()
