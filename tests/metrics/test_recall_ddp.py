"""Recall@N under 2-process CPU DDP (gloo) equals the single-process value."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from structvpr.metrics import RecallAtN, recall_at_n

N_DB, N_Q = 37, 14  # 51 items: odd, so a 2-way DistributedSampler pads one repeat


def _data():
    g = torch.Generator().manual_seed(0)
    desc = F.normalize(torch.randn(N_DB + N_Q, 8, generator=g), dim=1)
    utm = torch.rand(N_DB + N_Q, 2, generator=g).double() * 150
    return desc, utm, torch.arange(N_DB + N_Q) >= N_DB


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    desc, utm, is_q = _data()
    sampler = torch.utils.data.DistributedSampler(range(N_DB + N_Q), num_replicas=world, rank=rank, shuffle=True)
    mine = torch.tensor(list(iter(sampler)))
    metric = RecallAtN(ns=(1, 5, 10))
    for chunk in mine.split(5):
        metric.update(desc[chunk], chunk, is_q[chunk], utm[chunk])
    result = {k: v.item() for k, v in metric.compute().items()}
    torch.save(result, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_recall_equals_single_process(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    desc, utm, is_q = _data()
    want = recall_at_n(desc[is_q], desc[~is_q], (1, 5, 10), query_utm=utm[is_q], database_utm=utm[~is_q])
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt") == pytest.approx(want)
