import numpy as np
import pytest
import torch
import torch.nn.functional as F

from structvpr.metrics import RecallAtN, first_positive_rank, recall_at_n
from structvpr.retrieval.search import knn


def _onehot(i, d=8):
    v = torch.zeros(d)
    v[i] = 1
    return v


def test_known_answer_hand_placed():
    # database: 4 items on the x axis at 0, 100, 200, 300 m; descriptors are axis vectors
    db = torch.stack([_onehot(i) for i in range(4)])
    db_utm = torch.tensor([[0.0, 0], [100, 0], [200, 0], [300, 0]])
    # q0 looks like db1 but stands at db0 -> first positive found at rank 2 (db1 first, db0 next)
    q0 = F.normalize(_onehot(1) * 1.0 + _onehot(0) * 0.5, dim=0)
    # q1 looks like db2 and stands at db2 -> rank 1
    q1 = _onehot(2)
    # q2 stands at 1000 m: no positive anywhere -> excluded
    q2 = _onehot(3)
    out = recall_at_n(
        torch.stack([q0, q1, q2]),
        db,
        ns=(1, 2, 3),
        query_utm=torch.tensor([[5.0, 0], [190, 0], [1000, 0]]),
        database_utm=db_utm,
        radius=25,
    )
    assert out == {"R@1": 0.5, "R@2": 1.0, "R@3": 1.0, "num_queries": 2, "num_excluded": 1}


def test_n_larger_than_database_counts_the_whole_database():
    db = torch.eye(3)
    q = F.normalize(torch.tensor([[1.0, 0.9, 0.8]]), dim=1)  # nearest db0, then db1, then db2
    out = recall_at_n(q, db, ns=(1, 10, 100), positives=[[2]])
    assert out["R@1"] == 0.0 and out["R@10"] == 1.0 and out["R@100"] == 1.0
    ranks, has = first_positive_rank(q, db, 100, positives=[[2]])
    assert ranks.tolist() == [3] and has.tolist() == [True]
    ranks, _ = first_positive_rank(q, db, 2, positives=[[2]])
    assert ranks.tolist() == [3]  # beyond max_rank -> max_rank + 1


def test_ties_both_tied_items_are_within_top_two():
    db = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # db0 and db1 identical
    q = torch.tensor([[1.0, 0.0]])
    for positive in (0, 1):
        out = recall_at_n(q, db, ns=(2,), positives=[[positive]])
        assert out["R@2"] == 1.0
    assert recall_at_n(q, db, ns=(2,), positives=[[2]])["R@2"] == 0.0


def test_positive_lists_and_empty_lists():
    db = torch.eye(4)
    q = torch.eye(4)[:3]
    out = recall_at_n(q, db, ns=(1,), positives=[[0], [3], []])
    assert out == {"R@1": 0.5, "num_queries": 2, "num_excluded": 1}


def _brute_force(q, db, q_utm, db_utm, ns, radius):
    d = torch.cdist(q.double(), db.double())
    order = d.argsort(1)
    geo = torch.cdist(q_utm.double(), db_utm.double())
    res = {}
    valid = (geo <= radius).any(1)
    for n in ns:
        top = order[:, :n]
        hit = torch.gather(geo, 1, top) <= radius
        res[f"R@{n}"] = hit.any(1)[valid].float().mean().item()
    return res, int(valid.sum())


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_agrees_with_brute_force_on_random_data(backend):
    g = torch.Generator().manual_seed(0)
    db = F.normalize(torch.randn(300, 16, generator=g), dim=1)
    q = F.normalize(torch.randn(120, 16, generator=g), dim=1)
    db_utm = torch.rand(300, 2, generator=g) * 400
    q_utm = torch.rand(120, 2, generator=g) * 400
    ns = (1, 5, 10, 20)
    out = recall_at_n(q, db, ns, query_utm=q_utm, database_utm=db_utm, radius=30, backend=backend)
    want, valid = _brute_force(q, db, q_utm, db_utm, ns, 30)
    assert out["num_queries"] == valid and out["num_excluded"] == 120 - valid
    for n in ns:
        assert out[f"R@{n}"] == pytest.approx(want[f"R@{n}"])


def test_chunked_search_equals_unchunked():
    g = torch.Generator().manual_seed(1)
    db = torch.randn(1000, 8, generator=g)
    q = torch.randn(50, 8, generator=g)
    full = knn(q, db, 7, query_chunk=10_000, database_chunk=10_000)
    chunked = knn(q, db, 7, query_chunk=7, database_chunk=64)
    assert torch.equal(full, chunked)
    exact = torch.cdist(q, db).topk(7, largest=False).indices
    assert torch.equal(full, exact)


def test_metric_deduplicates_padded_repeats_and_accepts_any_order():
    g = torch.Generator().manual_seed(2)
    n_db, n_q = 40, 15
    desc = F.normalize(torch.randn(n_db + n_q, 8, generator=g), dim=1)
    utm = torch.rand(n_db + n_q, 2, generator=g) * 200
    is_q = torch.arange(n_db + n_q) >= n_db
    want = recall_at_n(desc[is_q], desc[~is_q], (1, 5), query_utm=utm[is_q], database_utm=utm[~is_q])
    metric = RecallAtN(ns=(1, 5))
    perm = torch.randperm(n_db + n_q, generator=g)
    padded = torch.cat([perm, perm[:3]])  # what a DistributedSampler adds
    for chunk in padded.split(8):
        metric.update(desc[chunk], chunk, is_q[chunk], utm[chunk])
    got = {k: v.item() for k, v in metric.compute().items()}
    assert got == pytest.approx(want)


def test_metric_rejects_bad_arguments():
    with pytest.raises(ValueError, match="ns must be positive"):
        RecallAtN(ns=(0, 5))
    with pytest.raises(ValueError, match="radius must be > 0"):
        RecallAtN(radius=0)
    with pytest.raises(ValueError, match="give either positives or both"):
        first_positive_rank(torch.eye(2), torch.eye(2), 5)
    with pytest.raises(ValueError, match=r"need \(Q, D\) and \(N, D\)"):
        knn(torch.zeros(2, 3), torch.zeros(4, 5), 1)
    with pytest.raises(ValueError, match="backend must be"):
        knn(torch.zeros(2, 3), torch.zeros(4, 3), 1, backend="annoy")


def test_positive_lists_are_numpy_friendly():
    out = recall_at_n(torch.eye(3), torch.eye(3), (1,), positives=[np.array([0]), np.array([1]), np.array([0])])
    assert out["R@1"] == pytest.approx(2 / 3)


def test_first_per_group_keeps_the_best_item_of_each_group_in_rank_order():
    from structvpr.retrieval.search import first_per_group, group_codes

    groups = group_codes(["p7", "p7", "p7", "p2", "p2", "p9"])
    assert groups.tolist() == [1, 1, 1, 0, 0, 2]
    out = first_per_group(np.array([[4, 0, 3, 1, 5, 2], [0, 1, 2, 3, 4, 5]]), groups, 4)
    assert out.tolist() == [[4, 0, 5, -1], [0, 3, 5, -1]]


def test_one_hit_per_panorama_known_answer():
    # Six database cutouts ranked 0..5 for the query; panoramas A A A B B C; the only
    # positive is cutout 5. Every cutout counted: first positive at rank 6. One hit per
    # panorama: the list is [0 (A), 3 (B), 5 (C)], so rank 3.
    db = torch.eye(6)
    q = F.normalize(torch.tensor([[6.0, 5, 4, 3, 2, 1]]), dim=1)
    plain = recall_at_n(q, db, ns=(1, 3, 5), positives=[[5]])
    assert (plain["R@3"], plain["R@5"]) == (0.0, 0.0)
    grouped = recall_at_n(q, db, ns=(1, 3, 5), positives=[[5]], database_groups=list("AAABBC"))
    assert (grouped["R@1"], grouped["R@3"], grouped["R@5"]) == (0.0, 1.0, 1.0)
    ranks, _ = first_positive_rank(q, db, 5, positives=[[5]], database_groups=list("AAABBC"))
    assert ranks.tolist() == [3]
    # The same through coordinates: cutout 5 stands at the query, the rest 1 km away.
    utm = torch.tensor([[1000.0, 0]] * 5 + [[0.0, 0]])
    out = recall_at_n(q, db, ns=(3,), query_utm=torch.zeros(1, 2), database_utm=utm, radius=25, database_groups=list("AAABBC"))
    assert out["R@3"] == 1.0
    with pytest.raises(ValueError, match="database_groups has 5 entries for 6 database items"):
        recall_at_n(q, db, positives=[[5]], database_groups=list("AAABB"))


def test_grouped_metric_matches_functional(tmp_path):
    gen = torch.Generator().manual_seed(0)
    db, qs = F.normalize(torch.randn(60, 16, generator=gen), dim=1), F.normalize(torch.randn(9, 16, generator=gen), dim=1)
    groups = [f"pano{i // 12}" for i in range(60)]  # 12 cutouts per panorama, as in Tokyo 24/7
    positives = [list(range(12 * (i % 5), 12 * (i % 5) + 12)) for i in range(9)]
    metric = RecallAtN(ns=(1, 2, 5), positives=positives, database_groups=groups)
    desc = torch.cat([db, qs])
    metric.update(desc, torch.arange(69), torch.arange(69) >= 60)
    got = {k: float(v) for k, v in metric.compute().items()}
    assert got == recall_at_n(qs, db, ns=(1, 2, 5), positives=positives, database_groups=groups)
    assert got["R@5"] == 1.0  # only five panoramas: every query finds its own within 5 distinct ones


def test_first_positive_rank_can_leave_each_query_itself_out():
    # a database image ranked against the rest: without exclude it finds itself at rank 1
    db = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    utm = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 0.0], [200.0, 0.0]])
    queries = db[[0, 2]]
    plain, _ = first_positive_rank(queries, db, 3, query_utm=utm[[0, 2]], database_utm=utm)
    assert plain.tolist() == [1, 1]
    left_out, _ = first_positive_rank(queries, db, 3, query_utm=utm[[0, 2]], database_utm=utm, exclude=np.array([0, 2]))
    # image 0 without itself retrieves 1, 3, 2 (1 is 10 m away: rank 1); image 2 retrieves 3, 1, 0 (rank 2)
    assert left_out.tolist() == [1, 2]
    none_out, _ = first_positive_rank(queries, db, 3, query_utm=utm[[0, 2]], database_utm=utm, exclude=np.array([-1, -1]))
    assert none_out.tolist() == [1, 1]
    # the left-out item does not use up the search depth: max_rank 1 still finds image 1 for image 0
    shallow, _ = first_positive_rank(queries, db, 1, query_utm=utm[[0, 2]], database_utm=utm, exclude=np.array([0, 2]))
    assert shallow.tolist() == [1, 2]
