def test_exact_ties_go_to_the_lower_index_in_every_backend():
    import numpy as np
    import torch

    from structvpr.metrics.recall import recall_at_n
    from structvpr.retrieval.search import knn

    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.normalize(torch.randn(50, 16, generator=g), dim=1)
    database = base.repeat_interleave(2, 0)  # rows 2i and 2i + 1 are the same descriptor
    queries = torch.nn.functional.normalize(base[:30] + 0.05 * torch.randn(30, 16, generator=g), dim=1)
    # A stable sort of the exact distances (lower index first among equals), as numpy would do.
    dist = ((queries[:, None].double() - database[None].double()) ** 2).sum(-1).numpy()
    expected = np.argsort(dist, axis=1, kind="stable")[:, :6]
    for backend in ("torch", "faiss", "auto"):
        assert knn(queries, database, 6, backend=backend).tolist() == expected.tolist(), backend
    # Only the lower-index copy of each query's own place is a positive: every query is a hit at 1.
    positives = [np.array([2 * i]) for i in range(30)]
    for backend in ("torch", "faiss"):
        assert recall_at_n(queries, database, (1,), positives=positives, backend=backend)["R@1"] == 1.0


def test_auto_times_both_searches_once_per_size_on_a_large_cpu_search(monkeypatch):
    from structvpr.retrieval import search

    monkeypatch.delenv("STRUCTVPR_SEARCH", raising=False)
    monkeypatch.setattr(search, "_cpu_choice", {})
    timed = []
    monkeypatch.setattr(search, "_time_cpu_backends", lambda dim: timed.append(dim) or "torch")
    large = (10_000, 100_000, 256)
    assert search.resolve_backend("auto", "cpu", (10, 100, 256)) == "faiss"  # small: no timing
    assert search.resolve_backend("auto", "cpu", large) == "torch"
    assert search.resolve_backend("auto", "cpu", large) == "torch" and timed == [256]  # timed once
    monkeypatch.setenv("STRUCTVPR_SEARCH", "faiss")
    assert search.resolve_backend("auto", "cpu", large) == "faiss"
    assert search.resolve_backend("torch", "cpu", large) == "torch"  # a backend by name is never overridden


def test_the_timing_picks_one_of_the_two_and_both_find_the_same_neighbours():
    import torch

    from structvpr.retrieval import search

    assert search._time_cpu_backends(64) in ("torch", "faiss")
    gen = torch.Generator().manual_seed(0)
    q, d = torch.randn(300, 64, generator=gen), torch.randn(5000, 64, generator=gen)
    assert torch.equal(search.knn(q, d, 10, backend="torch"), search.knn(q, d, 10, backend="faiss"))
