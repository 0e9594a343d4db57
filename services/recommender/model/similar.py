"""Books like a book: the one ranking of model/ranking.py, with the book as the reader. Its query is its own item
factors scaled to unit length (cosine similarity with the other books' unit factors) and its content vector, each
standardised over the other books and blended with alpha (content alone for a book CF does not have)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from recommender.model.ranking import BookRows, BoolArray, Query, query

if TYPE_CHECKING:
    from recommender.model.hybrid import HybridModel, ScoredBook


def similar_rows(model: HybridModel) -> BookRows:
    """The catalogue's rows with the item factors scaled to unit length: their products are cosine similarities."""
    factors = model.cf.item_factors
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    unit = (factors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    rows = model.rows
    return BookRows(unit, rows.item_of_book, rows.content, rows.popularity, rows.content_exact)


def similar_many(
    model: HybridModel, requests: Sequence[tuple[int, int]], allowed: BoolArray | None = None
) -> list[list[ScoredBook] | None]:
    """For each (book id, limit): the books like it among those `allowed` (catalogue positions; None: all), best
    first; None for a book not in the catalogue. The products are computed for all requests together, and an
    answer is the same alone or in a batch."""
    rows = model.similar_rows
    queries: dict[int, Query] = {}
    for i, (book_id, _limit) in enumerate(requests):
        position = model.catalogue.position(book_id)
        if position is None:
            continue
        item = int(rows.item_of_book[position])
        factors = rows.item_factors[item] if item >= 0 else None
        weights = (model.alpha, 1.0 - model.alpha, 0.0) if factors is not None else (0.0, 1.0, 0.0)
        queries[i] = query(rows, np.array([position], dtype=np.int32), factors, rows.content[position], weights)
    limits = [requests[i][1] for i in queries]
    masks = [allowed] * len(queries)
    found = dict(
        zip(queries, model.ranked(list(queries.values()), limits, between_books=True, allowed=masks), strict=True)
    )
    answers: list[list[ScoredBook] | None] = []
    for i in range(len(requests)):
        books = found.get(i)
        answers.append(None if books is None else model.books(books.positions, books.scores, books.cf, books.content))
    return answers
