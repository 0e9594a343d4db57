"""The served model: what it knows of the catalogue and of each reader, and its answers, ranked by the one
ranking of model/ranking.py (what evaluation measures too); "because you read" in model/explain.py, similar books
in model/similar.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

import numpy as np
import numpy.typing as npt

from recommender.model.answers import Reader, ReaderEvents, Reason, Recommendations, Request, ScoredBook, Strategy
from recommender.model.catalogue import Catalogue, grown
from recommender.model.cf import CFModel, FloatArray, IntArray, interaction_weights
from recommender.model.content import ContentModel
from recommender.model.dataset import Book
from recommender.model.derived import Derived
from recommender.model.explain import explained
from recommender.model.filters import author_key, capped
from recommender.model.index import CatalogueIndex, Search, build
from recommender.model.params import IndexParams, TrainingParams
from recommender.model.ranking import (
    Blend,
    BookRows,
    BoolArray,
    Mode,
    Query,
    Scored,
    popular_top,
    query,
    ranked,
    scored,
)
from recommender.model.similar import book_queries, unit_rows


@dataclass(frozen=True)
class ModelMeta:
    version: str
    trained_at: datetime
    training_seconds: float
    params: TrainingParams = field(default_factory=TrainingParams)  # what training chose
    metrics: dict[str, float] = field(default_factory=dict)  # offline metrics of this configuration
    snapshot: str = ""  # the database snapshot its data was read in ("": unknown, anything may be newer)


@dataclass(frozen=True)
class HybridModel:
    meta: ModelMeta
    catalogue: Catalogue
    cf: CFModel
    content: ContentModel
    cf_positions: IntArray  # catalogue row of each CF item
    popularity: FloatArray  # per catalogue row, in [0, 1]
    index: CatalogueIndex | None = None  # of the trained catalogue (model/index.py); None: exhaustive ranking
    changed_since_index: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))  # book ids
    # Book and user ids whose trained data this version must not use (erased after its snapshot): `forgetting`.
    forgotten: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    forgotten_users: frozenset[int] = frozenset()
    # What is computed from the books and fits once, shared with copies that keep them (a re-blend, an index).
    derived: Derived = field(default_factory=Derived, compare=False, repr=False)

    @classmethod
    def assemble(
        cls,
        meta: ModelMeta,
        catalogue: Catalogue,
        cf: CFModel,
        content: ContentModel,
        index: CatalogueIndex | None = None,
        changed_since_index: IntArray | None = None,
        forgotten: IntArray | None = None,
        forgotten_users: frozenset[int] = frozenset(),
    ) -> HybridModel:
        cf_positions = catalogue.positions(cf.item_ids)
        counts = np.zeros(len(catalogue.book_ids), dtype=np.float32)
        liked = cf.user_items.copy()
        liked.data = (liked.data > 0).astype(np.float32)
        counts[cf_positions] = np.asarray(liked.sum(axis=0)).ravel()  # users who liked each book
        none = np.zeros(0, dtype=np.int32)
        forgotten = none if forgotten is None else forgotten
        counts[catalogue.positions(forgotten)] = 0.0
        top = counts.max() if len(counts) else 0.0
        popularity = counts / top if top > 0 else counts
        changed = none if changed_since_index is None else changed_since_index
        return cls(meta, catalogue, cf, content, cf_positions, popularity, index, changed, forgotten, forgotten_users)

    def indexed(self, params: IndexParams) -> HybridModel:
        """This model with an index of its catalogue when the catalogue has `params.min_books` books or more."""
        if self.num_books < params.min_books:
            return self
        meta = dataclasses.replace(self.meta, params=dataclasses.replace(self.meta.params, index=params))
        index = build(self.catalogue.book_ids, self.rows, self.similar_rows.item_factors, params)
        return dataclasses.replace(self, meta=meta, index=index)

    def forgetting(self, book_ids: Sequence[int], user_ids: Sequence[int] = ()) -> HybridModel:
        """This model without what it learned of `book_ids` and `user_ids` (erased after its snapshot). A book: no
        CF factors and no popularity of its own, and no place in any reader's recorded history (such a reader's
        factors are folded in again from the rest); one written again under its id starts anew, from its text
        alone. A user: no recorded history (a stranger, until their events say otherwise)."""
        users = self.forgotten_users | {u for u in user_ids if self.cf.user_row(u) is not None}
        known = self.catalogue.book_ids[self.catalogue.positions(np.unique(np.asarray(book_ids, dtype=np.int64)))]
        ids = np.union1d(self.forgotten, known).astype(np.int32)
        if len(ids) == len(self.forgotten) and users == self.forgotten_users:
            return self
        changed = np.union1d(self.changed_since_index, ids).astype(np.int32)  # the index's rows of theirs are stale
        return HybridModel.assemble(self.meta, self.catalogue, self.cf, self.content, self.index, changed, ids, users)

    @cached_property
    def search(self) -> Search | None:
        """The index's search over this catalogue (None: the exhaustive ranking)."""
        if self.index is None:
            return None
        return Search.over(self.index, self.catalogue.book_ids, self.changed_since_index, self.meta.params.index)

    @property
    def alpha(self) -> float:
        return self.meta.params.alpha

    @cached_property
    def blend(self) -> Blend:
        params = self.meta.params
        return Blend(params.alpha, params.popularity_prior, params.cf_prior)

    def with_blend(
        self, alpha: float | None = None, popularity_prior: float | None = None, cf_prior: float | None = None
    ) -> HybridModel:
        """The same fits blended otherwise (no refit)."""
        now = self.meta.params
        params = dataclasses.replace(
            now,
            alpha=now.alpha if alpha is None else alpha,
            popularity_prior=now.popularity_prior if popularity_prior is None else popularity_prior,
            cf_prior=now.cf_prior if cf_prior is None else cf_prior,
        )
        return dataclasses.replace(self, meta=dataclasses.replace(self.meta, params=params))  # `derived` shared

    @property
    def num_books(self) -> int:
        return len(self.catalogue.book_ids)

    def reader(self, user_id: int, events: ReaderEvents | None = None) -> Reader:
        """The model's record of the user; or, when given, `events` (everything the user did, newer than
        the model), with CF factors folded in from it."""
        if events is None:
            row = None if user_id in self.forgotten_users else self.cf.user_row(user_id)
            if row is None:
                return Reader(None, np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32))
            item_positions, weights = self.cf.interactions(row)
            seen = self.cf_positions[item_positions]
            kept = self._item_of_position[seen] >= 0  # (a recorded book without an item: forgotten)
            if not kept.all():
                return Reader(None, seen[kept], weights[kept], self.fold_in(seen[kept], weights[kept]))
            return Reader(row, seen, weights)
        ratings = dict(events)
        seen = self.catalogue.positions([book_id for book_id, _ in events])
        rated = [ratings[int(self.catalogue.book_ids[p])] for p in seen]
        weights = interaction_weights([np.nan if r is None else r for r in rated], self.cf.params.rating_scale)
        recorded = self.reader(user_id)
        if recorded.cf_row is not None and _same_history(recorded, seen, weights):
            return recorded  # nothing new after all: the trained factors, not a refit of them
        return Reader(None, seen, weights, self.fold_in(seen, weights))

    def fold_in(self, positions: IntArray, weights: FloatArray) -> FloatArray | None:
        """CF factors for a history of catalogue `positions` (see `CFModel.fold_in`); None when CF knows none of
        the books."""
        items = self._item_of_position[positions]
        known = items >= 0
        return self.cf.fold_in(items[known], weights[known])

    @property
    def _item_of_position(self) -> IntArray:
        """CF item index of each catalogue row; -1 for books CF does not have."""
        return self.derived.of(self._basis, "item_of_position", self._items)

    def _items(self) -> IntArray:
        items = np.full(self.num_books, -1, dtype=np.int32)
        items[self.cf_positions] = np.arange(len(self.cf_positions), dtype=np.int32)
        items[self.catalogue.positions(self.forgotten)] = -1
        return items

    def with_books(self, books: Sequence[Book]) -> HybridModel:
        """This model with `books` added to the catalogue or updated in it: content vectors from the version's
        text encoder (zero for versions without one), no CF factors until a retrain."""
        found = grown(self.catalogue, self.content, books)
        if found is None:
            return self
        catalogue, merged, incoming = found
        changed_ids = np.union1d(self.changed_since_index, incoming).astype(np.int32)
        return HybridModel.assemble(
            self.meta, catalogue, self.cf, merged, self.index, changed_ids, self.forgotten, self.forgotten_users
        )

    def similar(self, book_id: int, limit: int, allowed: BoolArray | None = None) -> list[ScoredBook] | None:
        """Books like `book_id`, best first (see model/similar.py); None when the book is not in the catalogue."""
        return self.similar_many([(book_id, limit)], allowed)[0]

    def similar_many(
        self, requests: Sequence[tuple[int, int]], allowed: BoolArray | None = None
    ) -> list[list[ScoredBook] | None]:
        """For each (book id, limit): the books like it among those `allowed` (catalogue positions; None: all),
        best first; None for a book not in the catalogue. One product for all requests: an answer is the same
        alone or in a batch."""
        positions = [self.catalogue.position(book_id) for book_id, _limit in requests]
        queries = book_queries(self.similar_rows, positions, self.alpha)
        limits = [requests[i][1] for i in queries]
        ranked = self.ranked(list(queries.values()), limits, between_books=True, allowed=[allowed] * len(queries))
        found = dict(zip(queries, ranked, strict=True))
        return [
            None
            if (books := found.get(i)) is None
            else self.books(books.positions, books.scores, books.cf, books.content)
            for i in range(len(requests))
        ]

    @property
    def _basis(self) -> tuple[object, ...]:
        """What `derived` is computed from."""
        return (self.catalogue, self.cf, self.content, self.popularity, self.forgotten)

    @property
    def similar_rows(self) -> BookRows:
        return self.derived.of(self._basis, "similar_rows", lambda: unit_rows(self.rows))

    @property
    def rows(self) -> BookRows:
        """Every book's row and the catalogue statistics: what the ranking is made of."""
        return self.derived.of(self._basis, "rows", self._rows)

    def _rows(self) -> BookRows:
        return BookRows(
            self.cf.item_factors,
            self._item_of_position,
            self.content.vectors,
            self.popularity,
        )

    def recommend(
        self, user_id: int, limit: int, events: ReaderEvents | None = None, explain: bool = True
    ) -> Recommendations:
        """Top `limit` books the user has not interacted with, best first (see `recommend_many`).

        `events`: everything the user did, when it is newer than the model (see `reader`). `explain`: each book
        with the reader's books it comes from (`because`).
        """
        return self.recommend_many([Request(user_id, limit, events)], explain)[0]

    def recommend_many(self, requests: Sequence[Request], explain: bool = True) -> list[Recommendations]:
        """Each request's answer, ranked together (one product for the batch, model/ranking.py); an answer is the
        same alone or in a batch. A reader with no history gets the popular books. A request's `allowed` holds
        before the top-k; its author cap reads the ranking as deep as it needs."""
        readers = [self.reader(r.user_id, r.events) for r in requests]
        queries = {i: self.query(reader) for i, reader in enumerate(readers) if len(reader.seen)}
        plain = [i for i in queries if requests[i].max_per_author is None]
        answers = self.ranked(
            [queries[i] for i in plain],
            [requests[i].limit for i in plain],
            allowed=[requests[i].allowed for i in plain],
        )
        best = dict(zip(plain, answers, strict=True))
        for i in queries.keys() - set(plain):
            best[i] = self._capped(queries[i], requests[i])
        return [
            self._answer(readers[i], queries[i], best[i], explain) if i in queries else self._popular(r)
            for i, r in enumerate(requests)
        ]

    def _capped(self, q: Query, request: Request) -> Scored:
        """The query's best books with at most `request.max_per_author` of one author."""
        allowed = request.allowed

        def rank(n: int) -> IntArray:
            return self.ranked([q], [n], allowed=[allowed])[0].positions

        available = self.num_books if allowed is None else int(allowed.sum())
        cap = request.max_per_author or request.limit
        picked = capped(rank, self.author_codes, request.limit, cap, available)
        return scored(self.rows, q, picked)

    @property
    def author_codes(self) -> IntArray:
        """Per catalogue position, a code of its first author (model/filters.py's `author_key`)."""
        return self.derived.of(self._basis, "author_codes", self._author_codes)

    def _author_codes(self) -> IntArray:
        _keys, codes = np.unique([author_key(a) for a in self.catalogue.authors], return_inverse=True)
        return codes.astype(np.int32)

    def query(self, reader: Reader, mode: Mode = Mode.HYBRID) -> Query:
        """The reader's ranking by `mode` (the served blend, or one of its parts) as one query vector."""
        user = reader.user_vector(self.cf)
        profile = self.content.profile(reader.seen, np.maximum(reader.weights, 0.0)) if len(reader.seen) else None
        weights = self.blend.of_mode(mode, reader.liked, user is not None)
        return query(self.rows, np.unique(reader.seen), user, profile, weights)

    def top_books(
        self, user_ids: Sequence[int], k: int, modes: Sequence[Mode], batch: int = 256
    ) -> dict[Mode, list[IntArray]]:
        """The top-k book ids of many users (each as the model records them), by each of `modes`: what evaluation
        ranks, the same ranking as a request's."""
        found: dict[Mode, list[IntArray]] = {mode: [] for mode in modes}
        for start in range(0, len(user_ids), batch):
            readers = [self.reader(user) for user in user_ids[start : start + batch]]
            for mode in modes:
                queries = [self.query(reader, mode) for reader in readers]
                found[mode] += [self.catalogue.book_ids[a.positions] for a in self.ranked(queries, [k] * len(queries))]
        return found

    def ranked(
        self,
        queries: Sequence[Query],
        limits: Sequence[int],
        between_books: bool = False,
        allowed: Sequence[BoolArray | None] = (),
    ) -> list[Scored]:
        """Each query's best books, scored, best first: through the index when the model has one, else one
        exhaustive product for them all. `between_books`: the queries are books (`similar_rows`); `allowed[i]`:
        the positions query i's answer may hold (None: all)."""
        rows = self.similar_rows if between_books else self.rows
        if self.search is None:
            return ranked(rows, queries, limits, allowed)
        masks = list(allowed) or [None] * len(queries)
        return [
            self.search.ranked(rows, q, n, allowed=mask, between_books=between_books)
            for q, n, mask in zip(queries, limits, masks, strict=True)
        ]

    def _answer(self, reader: Reader, q: Query, books: Scored, explain: bool) -> Recommendations:
        because = (
            explained(self.catalogue, self.content, self.rows, self.cf, books.positions, reader, q) if explain else None
        )
        strategy = Strategy.CONTENT if q.user is None else Strategy.HYBRID
        return Recommendations(strategy, self.books(books.positions, books.scores, books.cf, books.content, because))

    def _popular(self, request: Request) -> Recommendations:
        """For a user with no history: the most liked books among those allowed, scored by popularity."""
        if request.max_per_author is not None:
            order = popular_top(self.rows, self.num_books, request.allowed)
            best = capped(lambda n: order[:n], self.author_codes, request.limit, request.max_per_author, len(order))
        else:
            best = popular_top(self.rows, request.limit, request.allowed)
        zeros = np.zeros(len(best))
        return Recommendations(Strategy.POPULAR, self.books(best, self.popularity[best], zeros, zeros))

    def books(
        self,
        positions: IntArray,
        scores: npt.ArrayLike,
        cf: npt.ArrayLike,
        content: npt.ArrayLike,
        because: list[tuple[Reason, ...]] | None = None,
    ) -> list[ScoredBook]:
        titles, authors = self.catalogue.titles, self.catalogue.authors
        return [
            ScoredBook(book_id, titles[p], authors[p], score, cf_score, content_score, reasons)
            for book_id, p, score, cf_score, content_score, reasons in zip(
                self.catalogue.book_ids[positions].tolist(),
                positions.tolist(),
                np.asarray(scores, dtype=np.float64).tolist(),
                np.asarray(cf, dtype=np.float64).tolist(),
                np.asarray(content, dtype=np.float64).tolist(),
                because or [()] * len(positions),
                strict=True,
            )
        ]


def _same_history(history: Reader, seen: IntArray, weights: FloatArray) -> bool:
    if len(history.seen) != len(seen):
        return False
    mine, theirs = np.argsort(history.seen), np.argsort(seen)
    return bool(
        np.array_equal(history.seen[mine], seen[theirs]) and np.allclose(history.weights[mine], weights[theirs])
    )


def warm(model: HybridModel) -> None:
    """Runs each code path once, so the first real request after a swap pays no first-call costs."""
    model.recommend(user_id=0, limit=1)
    if model.cf.num_users:
        user_id = int(model.cf.user_ids[0])
        model.recommend(user_id=user_id, limit=1)
        positions, _weights = model.cf.interactions(0)
        books = model.catalogue.book_ids[model.cf_positions[positions]]
        model.recommend(user_id=user_id, limit=1, events=[(int(b), None) for b in books])  # the fold-in
    if model.num_books:
        model.similar(int(model.catalogue.book_ids[0]), limit=1)
