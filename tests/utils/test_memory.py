from types import SimpleNamespace

import pytest
import torch

import structvpr.utils.memory as memory


def test_memory_check_counts_every_process_of_the_node(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: 10 * 2**20)  # 5 MiB usable
    need = 3 * 2**20
    memory.check_memory(need, torch.device("cpu"), SimpleNamespace(num_devices=1), "x", "y")  # one copy fits
    with pytest.raises(
        ValueError,
        match=r"teacher cache need 2 processes x 3.0 MiB, more than half the free "
        r"memory of cpu \(10.0 MiB\): lower cache_queries",
    ):
        memory.check_memory(need, torch.device("cpu"), SimpleNamespace(num_devices=2), "teacher cache", "lower cache_queries")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # set by the launcher: wins over the trainer's count
    assert memory.processes_sharing(torch.device("cpu"), SimpleNamespace(num_devices=1)) == 4
    assert memory.processes_sharing(torch.device("cuda", 0), SimpleNamespace(num_devices=8)) == 1
