"""Books like a book: the one ranking of model/ranking.py, with the book as the reader. Its query is its own item
factors scaled to unit length (cosine similarity with the other books' unit factors) and its content vector, each
standardised over the other books and blended with alpha (content alone for a book CF does not have)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recommender.model.answering import best_books, scored_books
from recommender.model.answers import ScoredBook
from recommender.model.hybrid import HybridModel
from recommender.model.ranking import BookRows, BoolArray, Query, query


def similar_to(
    model: HybridModel, book_id: int, limit: int, allowed: BoolArray | None = None
) -> list[ScoredBook] | None:
    """Books like `book_id`, best first; None when the book is not in the catalogue."""
    return similar_to_many(model, [(book_id, limit)], allowed)[0]


def similar_to_many(
    model: HybridModel, requests: Sequence[tuple[int, int]], allowed: BoolArray | None = None
) -> list[list[ScoredBook] | None]:
    """For each (book id, limit): the books like it among those `allowed` (catalogue positions; None: all), best
    first; None for a book not in the catalogue. One product for all requests: an answer is the same alone or in a
    batch."""
    positions = [model.catalogue.position(book_id) for book_id, _limit in requests]
    queries = book_queries(model.similar_rows, positions, model.alpha)
    limits = [requests[i][1] for i in queries]
    ranked = best_books(model, list(queries.values()), limits, between_books=True, allowed=[allowed] * len(queries))
    found = dict(zip(queries, ranked, strict=True))
    return [
        None
        if (books := found.get(i)) is None
        else scored_books(model, books.positions, books.scores, books.cf, books.content)
        for i in range(len(requests))
    ]


def book_queries(rows: BookRows, positions: Sequence[int | None], alpha: float) -> dict[int, Query]:
    """The query of each book at its catalogue position (over `BookRows.unit`), by its index in `positions`; a book
    not in the catalogue (None) has none."""
    queries: dict[int, Query] = {}
    for i, position in enumerate(positions):
        if position is None:
            continue
        item = int(rows.item_of_book[position])
        factors = rows.item_factors[item] if item >= 0 else None
        weights = (alpha, 1.0 - alpha, 0.0) if factors is not None else (0.0, 1.0, 0.0)
        queries[i] = query(rows, np.array([position], dtype=np.int32), factors, rows.content[position], weights)
    return queries
