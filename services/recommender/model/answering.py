"""What every answer of a version is made of: the best books for queries, through the version's index when it
has one, else one exhaustive product for them all (model/ranking.py); and those books as an answer's records."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from recommender.model import learned
from recommender.model.answers import Reader, Reason, ScoredBook
from recommender.model.cf import IntArray
from recommender.model.hybrid import HybridModel
from recommender.model.ranking import BoolArray, Query, Scored
from recommender.model.shortlist import Shortlist, ranked, shortlists
from recommender.model.signals import ReaderSignals

# How much deeper than an answer the blend's shortlist goes when book signals re-rank it: room for the books the
# signals hold back to be replaced.
SIGNALS_DEPTH = 10


def best_books(
    model: HybridModel,
    queries: Sequence[Query],
    limits: Sequence[int],
    between_books: bool = False,
    allowed: Sequence[BoolArray | None] = (),
    signals: Sequence[ReaderSignals] = (),
) -> list[Scored]:
    """Each query's best books, scored, best first. `between_books`: the queries are books (`similar_rows`);
    `allowed[i]`: the positions query i's answer may hold (None: all); `signals[i]`: query i's reader's book
    signals (model/signals.py, `reader_signals`), which then re-rank a deeper shortlist of the blend's candidates:
    weighed, or by the version's learned second stage where it has one and the reader's history is long enough
    (model/learned.py)."""
    masks = list(allowed) or [None] * len(queries)
    if not signals:
        return _ranked(model, queries, limits, between_books, masks)
    ranker = model.ranker
    chosen = [learned.serves(ranker, mine) for mine in signals]
    depths = [
        learned.depth_for(n) if by_trees else n + max(n, SIGNALS_DEPTH)
        for n, by_trees in zip(limits, chosen, strict=True)
    ]
    weights = model.meta.params.signals
    return [
        learned.best(ranker.trees, model.signals, mine, model.rows, q, listed, (depth, n), mask)
        if by_trees and ranker is not None
        else mine.best(model.signals, weights, model.rows, q, listed, (depth, n), mask)
        for q, mine, listed, depth, n, mask, by_trees in zip(
            queries, signals, _shortlisted(model, queries, depths, masks), depths, limits, masks, chosen, strict=True
        )
    ]


def _ranked(
    model: HybridModel,
    queries: Sequence[Query],
    limits: Sequence[int],
    between_books: bool,
    masks: Sequence[BoolArray | None],
) -> list[Scored]:
    """Through the version's index when it has one, else one exhaustive product for them all."""
    rows = model.similar_rows if between_books else model.rows
    if model.search is None:
        return ranked(rows, queries, limits, masks)
    return [
        model.search.ranked(rows, q, n, allowed=mask, between_books=between_books)
        for q, n, mask in zip(queries, limits, masks, strict=True)
    ]


def _shortlisted(
    model: HybridModel, queries: Sequence[Query], depths: Sequence[int], masks: Sequence[BoolArray | None]
) -> list[Shortlist]:
    """Per query, rows that hold its `depths[i]` best: the exhaustive product's shortlist, or the index's answer."""
    if model.search is None:
        return shortlists(model.rows, queries, depths, masks)
    search = model.search
    return [
        Shortlist(search.ranked(model.rows, q, n, allowed=mask).positions, None)
        for q, n, mask in zip(queries, depths, masks, strict=True)
    ]


def reader_signals(model: HybridModel, readers: Sequence[Reader]) -> list[ReaderSignals]:
    """The readers' book signals when the version ranks with them (none otherwise: the blend alone)."""
    if (model.meta.params.signals.off and model.ranker is None) or model.signals.empty:
        return []
    return [ReaderSignals.of(model.signals, reader.seen, reader.weights) for reader in readers]


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
    titles, authors, series = catalogue.titles, catalogue.authors, catalogue.series
    return [
        ScoredBook(book_id, titles[p], authors[p], score, cf_score, content_score, reasons, series[p])
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
