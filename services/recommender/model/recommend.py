"""A version's recommendations: each reader's query (the served blend, or one of its parts), ranked by the one
ranking of model/ranking.py (what evaluation measures too), with the author cap, popular books for a reader with
no history, and "because you read" (model/explain.py) for the returned books."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recommender.model import learned
from recommender.model.answering import best_books, reader_signals, scored_books
from recommender.model.answers import Reader, ReaderEvents, Reason, Recommendations, Request, Strategy
from recommender.model.cf import IntArray
from recommender.model.explain import SHOWN, explained, signal_reasons
from recommender.model.filters import capped
from recommender.model.hybrid import HybridModel
from recommender.model.ranking import Mode, Query, Scored, popular_top, query, scored
from recommender.model.readers import reader_of
from recommender.model.signals import ReaderSignals


def recommend(
    model: HybridModel, user_id: int, limit: int, events: ReaderEvents | None = None, explain: bool = True
) -> Recommendations:
    """Top `limit` books the user has not interacted with, best first (see `recommend_many`).

    `events`: everything the user did, when it is newer than the version (see model/readers.py). `explain`: each
    book with the reader's books it comes from (`because`).
    """
    return recommend_many(model, [Request(user_id, limit, events)], explain)[0]


def recommend_many(model: HybridModel, requests: Sequence[Request], explain: bool = True) -> list[Recommendations]:
    """Each request's answer, ranked together (one product for the batch); an answer is the same alone or in a
    batch. A reader with no history gets the popular books. A request's `allowed` holds before the top-k; its
    author cap reads the ranking as deep as it needs."""
    readers = [reader_of(model, r.user_id, r.events) for r in requests]
    queries = {i: query_for(model, reader) for i, reader in enumerate(readers) if len(reader.seen)}
    signals = dict(zip(queries, reader_signals(model, [readers[i] for i in queries]), strict=False))
    plain = [i for i in queries if requests[i].max_per_author is None]
    answers = best_books(
        model,
        [queries[i] for i in plain],
        [requests[i].limit for i in plain],
        allowed=[requests[i].allowed for i in plain],
        signals=[signals[i] for i in plain if i in signals],
    )
    best = dict(zip(plain, answers, strict=True))
    for i in queries.keys() - set(plain):
        best[i] = _capped(model, queries[i], requests[i], signals.get(i))
    return [
        _answer(model, readers[i], signals.get(i), queries[i], best[i], explain) if i in queries else _popular(model, r)
        for i, r in enumerate(requests)
    ]


def query_for(model: HybridModel, reader: Reader, mode: Mode = Mode.HYBRID) -> Query:
    """The reader's ranking by `mode` (the served blend, or one of its parts) as one query vector."""
    user = reader.user_vector(model.cf)
    profile = model.content.profile(reader.seen, np.maximum(reader.weights, 0.0)) if len(reader.seen) else None
    weights = model.blend.of_mode(mode, reader.liked, user is not None)
    return query(model.rows, np.unique(reader.seen), user, profile, weights)


def top_books(
    model: HybridModel, user_ids: Sequence[int], k: int, modes: Sequence[Mode], batch: int = 256
) -> dict[Mode, list[IntArray]]:
    """The top-k book ids of many users (each as the version records them), by each of `modes`: what evaluation
    ranks, the same ranking as a request's."""
    found: dict[Mode, list[IntArray]] = {mode: [] for mode in modes}
    book_ids = model.catalogue.book_ids
    for start in range(0, len(user_ids), batch):
        readers = [reader_of(model, user) for user in user_ids[start : start + batch]]
        for mode in modes:
            queries = [query_for(model, reader, mode) for reader in readers]
            signals = reader_signals(model, readers) if mode is Mode.HYBRID else []  # the parts: as themselves
            found[mode] += [
                book_ids[a.positions] for a in best_books(model, queries, [k] * len(queries), signals=signals)
            ]
    return found


def _capped(model: HybridModel, q: Query, request: Request, mine: ReaderSignals | None) -> Scored:
    """The query's best books with at most `request.max_per_author` of one author."""
    allowed = request.allowed
    deepest: list[Scored] = []

    def rank(n: int) -> IntArray:
        deepest[:] = best_books(model, [q], [n], allowed=[allowed], signals=[mine] if mine is not None else [])
        return deepest[0].positions

    available = model.num_books if allowed is None else int(allowed.sum())
    cap = request.max_per_author or request.limit
    picked = capped(rank, model.author_codes, request.limit, cap, available)
    ranking = deepest[0] if deepest else scored(model.rows, q, picked)
    kept = np.isin(ranking.positions, picked)
    return Scored(ranking.positions[kept], ranking.scores[kept], ranking.cf[kept], ranking.content[kept])


def _answer(
    model: HybridModel, reader: Reader, mine: ReaderSignals | None, q: Query, books: Scored, explain: bool
) -> Recommendations:
    because = _because(model, reader, mine, q, books) if explain else None
    strategy = Strategy.CONTENT if q.user is None else Strategy.HYBRID
    return Recommendations(
        strategy, scored_books(model, books.positions, books.scores, books.cf, books.content, because)
    )


def _because(
    model: HybridModel, reader: Reader, mine: ReaderSignals | None, q: Query, books: Scored
) -> list[tuple[Reason, ...]] | None:
    """The reader's books each recommendation comes from (model/explain.py): what their book signals say first,
    then the books it comes from most through the blend, SHOWN in all."""
    said = None
    if mine is not None and len(books.positions):
        weights = learned.REASONS if learned.serves(model.ranker, mine) else model.meta.params.signals
        said = signal_reasons(model.catalogue, model.signals, weights, mine, books.positions, books.scores)
    room = [SHOWN - len(found) for found in said] if said is not None else []
    blended = explained(model.catalogue, model.content, model.rows, model.cf, books.positions, reader, q, room)
    if said is None:
        return blended
    if blended is None:
        return said if any(said) else None
    return [(*found, *theirs) for found, theirs in zip(said, blended, strict=True)]


def _popular(model: HybridModel, request: Request) -> Recommendations:
    """For a user with no history: the most liked books among those allowed, scored by popularity."""
    if request.max_per_author is not None:
        order = popular_top(model.rows, model.num_books, request.allowed)
        best = capped(lambda n: order[:n], model.author_codes, request.limit, request.max_per_author, len(order))
    else:
        best = popular_top(model.rows, request.limit, request.allowed)
    zeros = np.zeros(len(best))
    return Recommendations(Strategy.POPULAR, scored_books(model, best, model.popularity[best], zeros, zeros))
