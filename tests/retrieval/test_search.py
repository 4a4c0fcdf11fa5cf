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
