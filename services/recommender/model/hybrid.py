"""The served model: CF and content scores, each standardised over the user's candidate books (z-scores), blended
as alpha * cf + (1 - alpha) * content, leaning on content and popularity for readers with little history (`Blend`).

Why z-scores: CF scores are heavy-tailed (a few books stand far above the rest), content similarities are not.
Standardised, a clear CF favourite keeps its lead and content decides among near-ties; min-max scaling let weak
content evidence outvote CF. Measured (NDCG@10, same split, alpha 0.6): Goodreads sample 0.289 z-score vs 0.275
min-max vs 0.283 CF alone; MovieLens latest-small 0.302 vs 0.257 vs 0.291.

This module is the request path; evaluation's batch ranking of many users lives in model/ranking.py and blends
with the same `Blend`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cached_property

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recommender.model.cf import CFModel, FloatArray, IntArray, interaction_weights
from recommender.model.content import ContentModel
from recommender.model.dataset import Book
from recommender.model.params import TrainingParams
from recommender.model.products import ExactProduct

# (book_id, rating or None) of everything a user did, read from the database.
UserHistory = Sequence[tuple[int, float | None]]

# Popularity only breaks ties (equal blended scores): it never outweighs a real score difference.
TIE_BREAK = 1e-6


class Strategy(StrEnum):
    HYBRID = "hybrid"  # the user is in the CF model
    CONTENT = "content"  # history unknown to CF: content similarity to it
    POPULAR = "popular"  # no history at all


@dataclass(frozen=True)
class Catalogue:
    book_ids: IntArray  # sorted; the row order of the content model
    titles: list[str]
    authors: list[str]

    @classmethod
    def from_books(cls, books: Sequence[Book]) -> Catalogue:
        """`books` sorted by id."""
        return cls(
            np.array([b.book_id for b in books], dtype=np.int32), [b.title for b in books], [b.authors for b in books]
        )

    def position(self, book_id: int) -> int | None:
        found = self.positions([book_id])
        return int(found[0]) if len(found) else None

    def positions(self, book_ids: npt.ArrayLike) -> IntArray:
        """Catalogue rows of the given ids; ids not in the catalogue are dropped."""
        rows, known = self.lookup(book_ids)
        return rows[known]

    def lookup(self, book_ids: npt.ArrayLike) -> tuple[IntArray, npt.NDArray[np.bool_]]:
        """For each id, its catalogue row and whether it is in the catalogue (the row is meaningless where not)."""
        ids = np.asarray(book_ids, dtype=np.int32)
        if len(self.book_ids) == 0:
            return np.zeros(len(ids), dtype=np.int32), np.zeros(len(ids), dtype=bool)
        rows = np.minimum(np.searchsorted(self.book_ids, ids), len(self.book_ids) - 1).astype(np.int32)
        return rows, self.book_ids[rows] == ids


@dataclass(frozen=True)
class Reason:
    """One of the reader's own books that a recommendation comes from."""

    book_id: int
    title: str
    part: str  # "cf": readers who liked it liked the recommended book; "content": the two read alike
    share: float  # its share of what the reader's books gave the recommendation, 0-1


@dataclass(frozen=True)
class ScoredBook:
    book_id: int
    title: str
    authors: str
    score: float
    cf_score: float
    content_score: float
    because: tuple[Reason, ...] = ()


@dataclass(frozen=True)
class Request:
    user_id: int
    limit: int
    fresh_history: UserHistory | None = None  # everything the user did, when it is newer than the model


@dataclass(frozen=True)
class Recommendations:
    strategy: Strategy
    books: list[ScoredBook]


@dataclass(frozen=True)
class ModelMeta:
    version: str
    trained_at: datetime
    training_seconds: float
    params: TrainingParams = field(default_factory=TrainingParams)  # what training chose
    metrics: dict[str, float] = field(default_factory=dict)  # offline metrics of this configuration
    snapshot: str = ""  # the database snapshot its data was read in ("": unknown, anything may be newer)


@dataclass(frozen=True)
class History:
    """What one user has: catalogue positions, their interaction weights (negative: disliked), and the CF row,
    or for a history newer than the model, factors folded in from it."""

    cf_row: int | None
    seen: IntArray
    weights: FloatArray
    factors: FloatArray | None = None

    def user_vector(self, cf: CFModel) -> FloatArray | None:
        if self.factors is not None:
            return self.factors
        return cf.user_factors[self.cf_row] if self.cf_row is not None else None

    @property
    def liked(self) -> int:
        return int((self.weights > 0).sum())


@dataclass(frozen=True)
class BlendWeights:
    """Per user: the weights of the standardised CF, content and popularity scores in their ranking."""

    cf: npt.NDArray[np.float64]
    content: npt.NDArray[np.float64]
    popular: npt.NDArray[np.float64]


@dataclass(frozen=True)
class Blend:
    """How the parts are weighed, the one formula every ranking uses (one user or many: arrays broadcast).

    For a reader CF knows: `a * cf + (1 - a) * content`, where `a = alpha * liked / (liked + cf_prior)`: CF
    factors fitted on a few books say little, so content fills in for a reader with three books and alpha holds
    for one with fifty. That blend is then mixed with popularity in proportion `popularity_prior / (popularity_prior
    + liked)`. A reader CF does not know (no history it has, or a book without factors in `similar`): content alone.
    """

    alpha: float
    popularity_prior: float = 0.0
    cf_prior: float = 0.0

    def weights(self, liked: npt.ArrayLike, has_cf: npt.ArrayLike) -> BlendWeights:
        liked_ = np.asarray(liked, dtype=np.float64)
        known = np.asarray(has_cf, dtype=bool)
        trust = _share(liked_, self.popularity_prior)
        cf = np.where(known, self.alpha * _share(liked_, self.cf_prior), 0.0)
        return BlendWeights(cf=trust * cf, content=trust * (1.0 - cf), popular=1.0 - trust)


def _share(liked: npt.NDArray[np.float64], prior: float) -> npt.NDArray[np.float64]:
    """liked / (liked + prior): 1 without a prior."""
    return liked / (liked + prior) if prior > 0 else np.ones_like(liked)


@dataclass(frozen=True)
class HybridModel:
    meta: ModelMeta
    catalogue: Catalogue
    cf: CFModel
    content: ContentModel
    cf_positions: IntArray  # catalogue row of each CF item
    popularity: FloatArray  # per catalogue row, in [0, 1]

    @classmethod
    def assemble(cls, meta: ModelMeta, catalogue: Catalogue, cf: CFModel, content: ContentModel) -> HybridModel:
        cf_positions = catalogue.positions(cf.item_ids)
        counts = np.zeros(len(catalogue.book_ids), dtype=np.float32)
        liked = cf.user_items.copy()
        liked.data = (liked.data > 0).astype(np.float32)
        counts[cf_positions] = np.asarray(liked.sum(axis=0)).ravel()  # users who liked each book
        top = counts.max() if len(counts) else 0.0
        popularity = counts / top if top > 0 else counts
        return cls(meta, catalogue, cf, content, cf_positions, popularity)

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
        return dataclasses.replace(self, meta=dataclasses.replace(self.meta, params=params))

    @property
    def num_books(self) -> int:
        return len(self.catalogue.book_ids)

    def history(self, user_id: int, fresh_history: UserHistory | None = None) -> History:
        """The model's record of the user; or, when given, `fresh_history` (everything the user did, newer than
        the model), with CF factors folded in from it."""
        if fresh_history is None:
            row = self.cf.user_row(user_id)
            if row is None:
                return History(None, np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32))
            item_positions, weights = self.cf.history(row)
            return History(row, self.cf_positions[item_positions], weights)
        ratings = dict(fresh_history)
        seen = self.catalogue.positions([book_id for book_id, _ in fresh_history])
        rated = [ratings[int(self.catalogue.book_ids[p])] for p in seen]
        weights = interaction_weights([np.nan if r is None else r for r in rated], self.cf.params.rating_scale)
        recorded = self.history(user_id)
        if recorded.cf_row is not None and _same_history(recorded, seen, weights):
            return recorded  # nothing new after all: the trained factors, not a refit of them
        return History(None, seen, weights, self.fold_in(seen, weights))

    def fold_in(self, positions: IntArray, weights: FloatArray) -> FloatArray | None:
        """CF factors for a history of catalogue `positions` (see `CFModel.fold_in`); None when CF knows none of
        the books."""
        items = self._item_of_position[positions]
        known = items >= 0
        return self.cf.fold_in(items[known], weights[known])

    @cached_property
    def _item_of_position(self) -> IntArray:
        """CF item index of each catalogue row; -1 for books CF does not have."""
        items = np.full(self.num_books, -1, dtype=np.int32)
        items[self.cf_positions] = np.arange(len(self.cf_positions), dtype=np.int32)
        return items

    def with_books(self, books: Sequence[Book]) -> HybridModel:
        """This model with `books` added to the catalogue or updated in it: content vectors from the version's
        text encoder (zero for versions without one), no CF factors until a retrain."""
        if not books:
            return self
        latest = {book.book_id: book for book in books}
        incoming = [latest[book_id] for book_id in sorted(latest)]
        content = self.content
        if content.encoder is not None:
            features, vectors = content.encoder.encode([book.text() for book in incoming])
        else:
            features = sp.csr_matrix((len(incoming), content.feature_dim), dtype=np.float32)
            vectors = np.zeros((len(incoming), content.vectors.shape[1]), dtype=np.float32)
        rows, known = self.catalogue.lookup([book.book_id for book in incoming])
        same_text = known.copy()
        if content.encoder is not None and known.any():  # a re-encoding differs in the last float bits: compare
            difference = abs(content.features[rows[known]] - features[np.flatnonzero(known)])
            same_text[known] = np.asarray(difference.max(axis=1).todense()).ravel() < 1e-5
        same_name = known & np.array(
            [
                (b.title, b.authors) == (self.catalogue.titles[r], self.catalogue.authors[r])
                for b, r in zip(incoming, rows, strict=True)
            ]
        )
        changed = np.flatnonzero(~(same_text & same_name))
        if len(changed) == 0:
            return self
        incoming = [incoming[i] for i in changed]
        features = sp.vstack(  # books whose text is unchanged keep their trained rows
            [content.features[rows[i]] if same_text[i] else features[i] for i in changed], format="csr"
        )
        vectors = np.stack([content.vectors[rows[i]] if same_text[i] else vectors[i] for i in changed])
        keep = np.setdiff1d(np.arange(self.num_books), rows[changed][known[changed]])
        ids = np.concatenate([self.catalogue.book_ids[keep], [book.book_id for book in incoming]]).astype(np.int32)
        order = np.argsort(ids, kind="stable")
        titles = [self.catalogue.titles[p] for p in keep] + [b.title for b in incoming]
        authors = [self.catalogue.authors[p] for p in keep] + [b.authors for b in incoming]
        catalogue = Catalogue(ids[order], [titles[i] for i in order], [authors[i] for i in order])
        merged = ContentModel(
            sp.csr_matrix(sp.vstack([content.features[keep], features], format="csr")[order]),
            np.vstack([content.vectors[keep], vectors])[order].astype(np.float32),
            content.encoder,
        )
        return HybridModel.assemble(self.meta, catalogue, self.cf, merged)

    def similar(self, book_id: int, limit: int) -> list[ScoredBook] | None:
        """Books like `book_id`, best first (see `similar_many`); None when the book is not in the catalogue."""
        return self.similar_many([(book_id, limit)])[0]

    def similar_many(self, requests: Sequence[tuple[int, int]]) -> list[list[ScoredBook] | None]:
        """For each (book id, limit): the books like it, best first: cosine similarity of item factors and of
        content vectors, each a z-score over the other books, blended with alpha (content alone for a book CF does
        not have); None for a book not in the catalogue. The products are computed for all requests together, and
        an answer is the same alone or in a batch."""
        positions = {
            i: p for i, (book_id, _limit) in enumerate(requests) if (p := self.catalogue.position(book_id)) is not None
        }
        rows = list(positions.values())
        content = self.content.similarity(self.content.vectors[rows])
        items = {i: item for i, p in positions.items() if (item := int(self._item_of_position[p])) >= 0}
        cf = self._item_similarity(self._item_similarity_rows[list(items.values())]) if items else None
        cf_row = {i: row for row, i in enumerate(items)}
        content_row = {i: row for row, i in enumerate(positions)}
        answers: list[list[ScoredBook] | None] = []
        for i, (_book_id, limit) in enumerate(requests):
            if i not in positions:
                answers.append(None)
                continue
            itself = np.array([positions[i]], dtype=np.int32)
            count = self.num_books - 1
            content_z = _Standardised(content[content_row[i]], itself, count)
            raw = np.zeros(self.num_books, dtype=np.float32)  # books nobody read: neither like nor unlike
            if cf is not None and i in cf_row:
                raw[self.cf_positions] = cf[cf_row[i]]
            weights = Blend(self.alpha).weights(0, has_cf=i in cf_row)
            cf_z = _Standardised(raw, itself, count)
            parts = [(cf_z, float(weights.cf)), (content_z, float(weights.content))]
            best, scores = self._ordered(self._ranked(parts, itself, limit), parts)
            answers.append(self._books(best, scores, cf_z.at(best), content_z.at(best)))
        return answers

    @cached_property
    def _item_similarity_rows(self) -> FloatArray:
        """Item factors scaled to unit length: their dot products are cosine similarities."""
        norms = np.linalg.norm(self.cf.item_factors, axis=1, keepdims=True)
        return (self.cf.item_factors / np.where(norms > 0, norms, 1.0)).astype(np.float32)

    @cached_property
    def _item_similarity(self) -> ExactProduct:
        return ExactProduct.of(self._item_similarity_rows)

    def spread_cf(self, raw: FloatArray) -> FloatArray:
        """CF scores (of the CF items, in the last axis) spread over the catalogue; books nobody read score as
        low as the lowest."""
        if len(self.cf_positions) == self.num_books:  # every book has interactions: the columns line up (both sorted)
            return raw
        full = np.repeat(raw.min(axis=-1, keepdims=True), self.num_books, axis=-1).astype(np.float32)
        full[..., self.cf_positions] = raw
        return full

    def content_raw(self, histories: Sequence[History]) -> FloatArray:
        """Cosine similarity of every book to each user's profile (the weighted mean of the books they liked)."""
        profiles = np.zeros((len(histories), self.content.vectors.shape[1]), dtype=np.float32)
        for i, h in enumerate(histories):
            if len(h.seen):
                profiles[i] = self.content.profile(h.seen, np.maximum(h.weights, 0.0))
        return self.content.scores(profiles)

    def cf_raw(self, vectors: FloatArray) -> FloatArray:
        """CF scores of every book (spread over the catalogue) for each row of user factors."""
        return self.spread_cf(self.cf.scores(vectors))

    def recommend(
        self, user_id: int, limit: int, fresh_history: UserHistory | None = None, explain: bool = True
    ) -> Recommendations:
        """Top `limit` books the user has not interacted with, best first (see `recommend_many`).

        `fresh_history`: everything the user did, when it is newer than the model (see `history`). `explain`: each
        book with the reader's books it comes from (`because`).
        """
        return self.recommend_many([Request(user_id, limit, fresh_history)], explain)[0]

    def recommend_many(self, requests: Sequence[Request], explain: bool = True) -> list[Recommendations]:
        """Each request's answer, the users' CF and content scores of every book computed together (one matrix
        product each, what a request's hot path spends most on); a request's answer is the same alone or in a
        batch. The rest per user, in as few passes over the catalogue as the maths allows; model/ranking.py ranks
        many users the same way for evaluation."""
        histories = [self.history(r.user_id, r.fresh_history) for r in requests]
        with_history = [i for i, h in enumerate(histories) if len(h.seen)]
        content = self.content_raw([histories[i] for i in with_history])
        vectors = {i: v for i in with_history if (v := histories[i].user_vector(self.cf)) is not None}
        cf = self.cf_raw(np.stack(list(vectors.values()))) if vectors else np.zeros((0, self.num_books), np.float32)
        content_of = {i: content[row] for row, i in enumerate(with_history)}
        cf_of = {i: cf[row] for row, i in enumerate(vectors)}
        return [
            self._recommend(histories[i], content_of[i], cf_of.get(i), r.limit, explain)
            if i in content_of
            else self._popular(r.limit)
            for i, r in enumerate(requests)
        ]

    def _recommend(
        self, history: History, content: FloatArray, cf: FloatArray | None, limit: int, explain: bool
    ) -> Recommendations:
        seen = np.unique(history.seen)
        candidates = self.num_books - len(seen)
        content_z = _Standardised(content, seen, candidates)
        weights = self.blend.weights(history.liked, has_cf=cf is not None)
        popular_z = _Standardised(self.popularity, seen, candidates, self._popularity_sums)
        cf_z = _Standardised(self._no_cf if cf is None else cf, seen, candidates)
        parts = [(cf_z, float(weights.cf)), (content_z, float(weights.content)), (popular_z, float(weights.popular))]
        best, scores = self._ordered(self._ranked(parts, seen, limit), parts)
        because = self._because(best, history, weights, cf_z, content_z) if explain else None
        strategy = Strategy.CONTENT if cf is None else Strategy.HYBRID
        return Recommendations(strategy, self._books(best, scores, cf_z.at(best), content_z.at(best), because))

    def _because(
        self,
        positions: IntArray,
        history: History,
        weights: BlendWeights,
        cf_z: _Standardised,
        content_z: _Standardised,
        shown: int = 3,
    ) -> list[tuple[Reason, ...]] | None:
        """For each recommended book (at catalogue `positions`), the reader's books it comes from most: what each
        liked book gives its score through CF (implicit's explanation of ALS, in the z-score's units and the
        blend's weight) and through content (its share of the profile's cosine similarity, likewise), the larger
        part named. None for a reader who liked nothing."""
        liked = history.weights > 0
        mine, my_weights = history.seen[liked], history.weights[liked]
        if len(mine) == 0 or len(positions) == 0:
            return None
        norm = float(np.linalg.norm(self.content.profile(mine, my_weights))) or 1.0
        content = self.content.vectors[positions] @ self.content.vectors[mine].T
        content *= my_weights * np.float32(content_z.inverse * float(weights.content) / norm)
        cf = np.zeros_like(content)
        items, target_items = self._item_of_position[mine], self._item_of_position[positions]
        known, reachable = items >= 0, target_items >= 0
        if float(weights.cf) > 0 and known.any() and reachable.any():
            given = self.cf.explain(items[known], my_weights[known], target_items[reachable])
            cf[np.ix_(reachable, known)] = given * np.float32(cf_z.inverse * float(weights.cf))
        total = np.maximum(cf, 0.0) + np.maximum(content, 0.0)
        wholes = total.sum(axis=1, keepdims=True)
        best = np.argsort(-total, axis=1, kind="stable")[:, :shown]
        rows = np.arange(len(positions))[:, None]
        shares = (total[rows, best] / np.where(wholes > 0, wholes, 1.0)).tolist()
        parts = np.where(cf[rows, best] >= content[rows, best], "cf", "content").tolist()
        sources = mine[best]
        ids, rows_of, titles = self.catalogue.book_ids[sources].tolist(), sources.tolist(), self.catalogue.titles
        return [
            tuple(
                Reason(book_id, titles[source], part, share)
                for book_id, source, part, share in zip(ids[row], rows_of[row], parts[row], shares[row], strict=True)
                if share > 0
            )
            for row in range(len(positions))
        ]

    def _popular(self, limit: int) -> Recommendations:
        """For a user with no history: the most liked books, scored by popularity."""
        best = top_k_rows(self._tie_broken_popularity[None, :], [min(limit, self.num_books)])[0]
        zeros = np.zeros(len(best))
        return Recommendations(Strategy.POPULAR, self._books(best, self.popularity[best], zeros, zeros))

    def _ranked(self, parts: Sequence[tuple[_Standardised, float]], seen: IntArray, limit: int) -> IntArray:
        """The catalogue positions of the `limit` best books by the weighted sum of the standardised `parts`,
        `seen` excluded, in the order of that sum (popularity breaks ties)."""
        ranking = TIE_BREAK * self.popularity
        for z, weight in parts:
            if weight:
                ranking += z.values * np.float32(weight * z.inverse)  # the z-score less a constant: same order
        ranking[seen] = -np.inf
        return top_k_rows(ranking[None, :], [min(limit, self.num_books - len(seen))])[0]

    def _ordered(
        self, best: IntArray, parts: Sequence[tuple[_Standardised, float]]
    ) -> tuple[IntArray, npt.NDArray[np.float64]]:
        """The books at `best` and their blended scores, in the order of those scores. The scores shown are
        computed apart from the ranking vector (in float64, from the z-scores) and the books ordered by them, so
        that an answer always reads best first (the two orders differ only where float rounding meets a near-tie;
        popularity breaks ties)."""
        scores = sum((weight * z.at(best) for z, weight in parts), np.zeros(len(best)))
        order = np.lexsort((-self.popularity[best], -scores))
        return best[order], scores[order]

    def _books(
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

    @cached_property
    def _tie_broken_popularity(self) -> FloatArray:
        return self.popularity + TIE_BREAK * self.popularity

    @cached_property
    def _popularity_sums(self) -> tuple[float, float]:
        return _sums(self.popularity)

    @cached_property
    def _no_cf(self) -> FloatArray:
        """CF scores of a reader CF does not know: none."""
        return np.zeros(self.num_books, dtype=np.float32)


class _Standardised:
    """One user's scores of every book as z-scores over their candidates, without a pass per step: the mean and
    spread come from sums over all books (`totals`, when known) less the books the user has."""

    def __init__(
        self, values: FloatArray, seen: IntArray, count: int, totals: tuple[float, float] | None = None
    ) -> None:
        self.values = values
        total, squares = _sums(values) if totals is None else totals
        excluded = values[seen].astype(np.float64)
        self.mean = (total - float(excluded.sum())) / max(count, 1)
        variance = (squares - float(np.dot(excluded, excluded))) / max(count, 1) - self.mean**2
        spread = math.sqrt(variance) if variance > 0 else 0.0
        self.inverse = 1.0 / spread if spread > 1e-9 else 0.0

    def at(self, positions: IntArray) -> npt.NDArray[np.float64]:
        return (self.values[positions].astype(np.float64) - self.mean) * self.inverse


def _sums(values: FloatArray) -> tuple[float, float]:
    """The sum and the sum of squares of `values`."""
    return float(values.sum(dtype=np.float64)), float(np.dot(values, values))


def _same_history(history: History, seen: IntArray, weights: FloatArray) -> bool:
    if len(history.seen) != len(seen):
        return False
    mine, theirs = np.argsort(history.seen), np.argsort(seen)
    return bool(
        np.array_equal(history.seen[mine], seen[theirs]) and np.allclose(history.weights[mine], weights[theirs])
    )


def top_k_rows(ranking: FloatArray, ks: Sequence[int]) -> list[IntArray]:
    """Each row's `ks[i]` best positions, best first (ties: the lower position first). Each row sorts the few
    values at or above a bar that at least k of its values reach (`_bars`)."""
    k = min(max(ks, default=0), ranking.shape[1])
    if k <= 0:
        return [np.zeros(0, dtype=np.int32) for _ in ks]
    tops = []
    for row, limit, bar in zip(ranking, ks, _bars(ranking, k), strict=True):
        best = np.flatnonzero(row >= bar)
        best = best[np.argsort(-row[best], kind="stable")][:limit]
        tops.append(best.astype(np.int32))
    return tops


# Interleaved groups of a row whose maxima bound its k best values from below (see _bars).
BAR_GROUPS = 256


def _bars(ranking: FloatArray, k: int) -> FloatArray:
    """Per row, a value that at least `k` of the row's values reach and that its k-th best value does not fall below:
    the k-th largest of the maxima of BAR_GROUPS interleaved groups (the k groups with the largest maxima each hold
    a value at or above it). Four times as fast as partitioning the row for the k-th best value itself (14 against
    60 us for 10,000 books), and the values above the bar are few."""
    rows, width = ranking.shape
    if k > BAR_GROUPS or width < BAR_GROUPS:
        return np.partition(ranking, width - k, axis=1)[:, width - k]
    whole = width - width % BAR_GROUPS
    maxima = ranking[:, :whole].reshape(rows, -1, BAR_GROUPS).max(axis=1)
    rest = width - whole
    maxima[:, :rest] = np.maximum(maxima[:, :rest], ranking[:, whole:])
    return np.partition(maxima, BAR_GROUPS - k, axis=1)[:, BAR_GROUPS - k]


def warm(model: HybridModel) -> None:
    """Runs each code path once, so the first real request after a swap pays no first-call costs."""
    model.recommend(user_id=0, limit=1)
    if model.cf.num_users:
        user_id = int(model.cf.user_ids[0])
        model.recommend(user_id=user_id, limit=1)
        positions, _weights = model.cf.history(0)
        books = model.catalogue.book_ids[model.cf_positions[positions]]
        model.recommend(user_id=user_id, limit=1, fresh_history=[(int(b), None) for b in books])  # the fold-in
    if model.num_books:
        model.similar(int(model.catalogue.book_ids[0]), limit=1)
