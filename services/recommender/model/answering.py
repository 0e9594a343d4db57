"""What every answer of a version is made of: the best books for queries, through the version's index when it
has one, else one exhaustive product for them all (model/ranking.py); and those books as an answer's records."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from recommender.model.answers import Reason, ScoredBook
from recommender.model.cf import IntArray
from recommender.model.hybrid import HybridModel
from recommender.model.ranking import BoolArray, Query, Scored, ranked


def best_books(
    model: HybridModel,
    queries: Sequence[Query],
    limits: Sequence[int],
    between_books: bool = False,
    allowed: Sequence[BoolArray | None] = (),
) -> list[Scored]:
    """Each query's best books, scored, best first. `between_books`: the queries are books (`similar_rows`);
    `allowed[i]`: the positions query i's answer may hold (None: all)."""
    rows = model.similar_rows if between_books else model.rows
    if model.search is None:
        return ranked(rows, queries, limits, allowed)
    masks = list(allowed) or [None] * len(queries)
    return [
        model.search.ranked(rows, q, n, allowed=mask, between_books=between_books)
        for q, n, mask in zip(queries, limits, masks, strict=True)
    ]


def scored_books(
    model: HybridModel,
    positions: IntArray,
    scores: npt.ArrayLike,
    cf: npt.ArrayLike,
    content: npt.ArrayLike,
    because: list[tuple[Reason, ...]] | None = None,
) -> list[ScoredBook]:
    """The books at catalogue `positions` with their scores (and reasons), as an answer holds them."""
    catalogue = model.catalogue
    titles, authors = catalogue.titles, catalogue.authors
    return [
        ScoredBook(book_id, titles[p], authors[p], score, cf_score, content_score, reasons)
        for book_id, p, score, cf_score, content_score, reasons in zip(
            catalogue.book_ids[positions].tolist(),
            positions.tolist(),
            np.asarray(scores, dtype=np.float64).tolist(),
            np.asarray(cf, dtype=np.float64).tolist(),
            np.asarray(content, dtype=np.float64).tolist(),
            because or [()] * len(positions),
            strict=True,
        )
    ]
