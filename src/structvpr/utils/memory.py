"""Up-front memory checks for arrays that every training process holds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device or available memory of the host; None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:  # MemAvailable counts reclaimable page cache, which plain "free" memory does not
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def size_text(num_bytes: float) -> str:
    """``1.5 GiB`` / ``12.0 MiB``."""
    return f"{num_bytes / 2**30:.1f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.1f} MiB"


def processes_sharing(device: torch.device, trainer: Any) -> int:
    """Training processes whose copy of an array on ``device`` shares one memory.

    A CUDA device belongs to one process; the host is shared by every process of the node
    (``LOCAL_WORLD_SIZE`` when the launcher sets it, else the trainer's devices per node).
    """
    if device.type == "cuda":
        return 1
    local = os.environ.get("LOCAL_WORLD_SIZE")
    if local is not None:
        return int(local)
    return int(getattr(trainer, "num_devices", 1) or 1) if trainer is not None else 1


def check_memory(need_bytes: int, device: torch.device, trainer: Any, what: str, instead: str) -> None:
    """Refuse, before any encoding, an array that would take over half the free memory.

    Every process of the node holds its own copy, so the need is multiplied by the
    processes that share the memory (see :func:`processes_sharing`).

    Raises:
        ValueError: naming the array, the need, the memory and what to set instead.
    """
    share = processes_sharing(device, trainer)
    free = free_memory_bytes(device)
    if free is not None and need_bytes * share > free / 2:
        procs = f"{share} processes x {size_text(need_bytes)}" if share > 1 else size_text(need_bytes)
        raise ValueError(f"{what} need {procs}, more than half the free memory of {device} ({size_text(free)}): {instead}")
