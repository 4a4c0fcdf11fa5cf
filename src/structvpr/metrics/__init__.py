"""Recall@N for place recognition."""

from structvpr.metrics.recall import RecallAtN, first_positive_rank, recall_at_n

__all__ = ["RecallAtN", "first_positive_rank", "recall_at_n"]
