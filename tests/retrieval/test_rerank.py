import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from structvpr.data import VPRDataModule
from structvpr.retrieval.rerank import LocalFeatureStore, keypoints, mutual_nearest_neighbours, rerank
from structvpr.tasks import StructVPRStudent

GRID, SIZE, C = (6, 12), (48, 96), 32


def _feats(seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(GRID[0], GRID[1], C, generator=g), dim=-1)


def _store(tmp_path, maps):
    store = LocalFeatureStore.create(tmp_path / "db.npy", len(maps), GRID, C, SIZE)
    store.write(torch.arange(len(maps)), torch.stack([m.reshape(-1, C) for m in maps]))
    store.flush()
    return LocalFeatureStore.open(tmp_path / "db.npy")


def test_store_round_trip(tmp_path):
    maps = [_feats(i) for i in range(3)]
    store = _store(tmp_path, maps)
    assert store.array.shape == (3, GRID[0] * GRID[1], C) and store.array.dtype == np.float16
    assert store.grid == GRID and store.image_size == SIZE
    torch.testing.assert_close(store[2], maps[2].reshape(-1, C), atol=1e-3, rtol=1e-3)
    (tmp_path / "db.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"db\.npy: local feature store"):
        LocalFeatureStore.open(tmp_path / "db.npy")


def test_identical_image_reranks_to_the_top(tmp_path):
    maps = [_feats(i) for i in range(5)]
    store = _store(tmp_path, maps)
    query = maps[3].reshape(-1, C)
    order, scores = rerank([query], store, torch.tensor([[0, 1, 2, 4, 3]]))
    assert order[0, 0].item() == 3
    assert scores[0, 4] == GRID[0] * GRID[1]  # every cell verified


def test_shuffled_candidate_loses_to_a_true_one(tmp_path):
    query = _feats(0)
    true = torch.roll(query, shifts=1, dims=1)  # the same place seen one cell to the side
    perm = torch.randperm(GRID[0] * GRID[1], generator=torch.Generator().manual_seed(1))
    shuffled = query.reshape(-1, C)[perm].reshape(GRID[0], GRID[1], C)  # same features, no geometry
    store = _store(tmp_path, [shuffled, true])
    order, scores = rerank([query.reshape(-1, C)], store, torch.tensor([[0, 1]]))
    assert order[0].tolist() == [1, 0]
    assert scores[0, 1] > 3 * scores[0, 0]


def test_mutual_nearest_neighbours_and_keypoints():
    a = torch.eye(3)
    b = torch.tensor([[0.0, 1, 0], [1, 0, 0], [1, 0, 0]])
    assert mutual_nearest_neighbours(a, b).tolist() == [[0, 1], [1, 0]]
    kp = keypoints(2, 4, (48, 96))
    assert kp[0].tolist() == [12.0, 12.0] and kp[-1].tolist() == [84.0, 36.0]


def test_structvpr_test_reports_both_stages(tiny_world, tmp_path):
    model = StructVPRStudent(rerank_top_k=5)
    dm = VPRDataModule(root=str(tiny_world), image_size=(32, 64), synthetic_preset=None, with_labels=False)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.test(model, datamodule=dm)
    res = model.rerank_results
    assert set(res) == {"global", "re-ranked"}
    assert res["global"]["R@1"] == pytest.approx(model.test_results["R@1"])  # same descriptors, same answer
    assert res["re-ranked"]["R@5"] == pytest.approx(res["global"]["R@5"])  # re-ordering within the top 5
    assert res["re-ranked"]["ms_per_query"] > res["global"]["ms_per_query"]
    run = tmp_path / "version_0"  # the run's own folder
    assert (run / "local_features.npy").is_file() and (run / "rerank_results.json").is_file()
    with pytest.raises(ValueError, match="rerank_top_k must be >= 1"):
        StructVPRStudent(rerank_top_k=0)
