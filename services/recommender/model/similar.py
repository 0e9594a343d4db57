"""Books like a book: the one ranking of model/ranking.py, with the book as the reader. Its query is its own item
factors scaled to unit length (cosine similarity with the other books' unit factors) and its content vector, each
standardised over the other books and blended with alpha (content alone for a book CF does not have)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recommender.model.ranking import BookRows, Query, query


def unit_rows(rows: BookRows) -> BookRows:
    """The catalogue's rows with the item factors scaled to unit length: their products are cosine similarities."""
    factors = rows.item_factors
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    unit = (factors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return BookRows(unit, rows.item_of_book, rows.content, rows.popularity)


def book_queries(rows: BookRows, positions: Sequence[int | None], alpha: float) -> dict[int, Query]:
    """The query of each book at its catalogue position (over `unit_rows`), by its index in `positions`; a book not
    in the catalogue (None) has none."""
    queries: dict[int, Query] = {}
    for i, position in enumerate(positions):
        if position is None:
            continue
        item = int(rows.item_of_book[position])
        factors = rows.item_factors[item] if item >= 0 else None
        weights = (alpha, 1.0 - alpha, 0.0) if factors is not None else (0.0, 1.0, 0.0)
        queries[i] = query(rows, np.array([position], dtype=np.int32), factors, rows.content[position], weights)
    return queries
