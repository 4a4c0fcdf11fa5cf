"""Each run's own output folder, so a later run of the same config never overwrites an earlier one."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_folder(trainer: Any) -> Path:
    """``<log dir>/version_N`` for this trainer, N the first free number; created once and cached.

    The log dir is the logger's (``trainer.log_dir``), else the trainer's root folder. Rank 0
    picks the folder and broadcasts it, so every process must call this (Lightning's ``setup``
    hooks do).
    """
    cached = getattr(trainer, "_structvpr_run_folder", None)
    if cached is not None:
        return Path(cached)
    base = Path(trainer.log_dir or trainer.default_root_dir)
    path = ""
    if trainer.is_global_zero:
        base.mkdir(parents=True, exist_ok=True)
        n = 0
        while True:  # mkdir is atomic: two runs starting together get different folders
            try:
                (base / f"version_{n}").mkdir()
                break
            except FileExistsError:
                n += 1
        path = str(base / f"version_{n}")
    path = trainer.strategy.broadcast(path, src=0)
    trainer._structvpr_run_folder = path
    return Path(path)
