"""Exact descriptor search and coordinate radius search."""

from structvpr.retrieval.search import knn, nearest_distance, radius_neighbours

__all__ = ["knn", "nearest_distance", "radius_neighbours"]
