"""The served model: CF and content scores blended as alpha * cf + (1 - alpha) * content on [0, 1] scales."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from recommender.model.cf import CFModel, FloatArray, IntArray, interaction_weights
from recommender.model.content import ContentModel
from recommender.model.dataset import Book

# Popularity only breaks ties (equal blended scores): it never outweighs a real score difference.
_TIE_BREAK = 1e-6


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

    def positions(self, book_ids: npt.ArrayLike) -> IntArray:
        """Catalogue rows of the given ids; ids not in the catalogue are dropped."""
        ids = np.asarray(book_ids, dtype=np.int32)
        rows = np.searchsorted(self.book_ids, ids)
        known = (rows < len(self.book_ids)) & (self.book_ids[np.minimum(rows, len(self.book_ids) - 1)] == ids)
        return rows[known].astype(np.int32)


@dataclass(frozen=True)
class ScoredBook:
    book_id: int
    title: str
    authors: str
    score: float
    cf_score: float
    content_score: float


@dataclass(frozen=True)
class Recommendations:
    strategy: Strategy
    books: list[ScoredBook]


@dataclass(frozen=True)
class ModelMeta:
    version: str
    trained_at: datetime
    training_seconds: float


@dataclass(frozen=True)
class HybridModel:
    meta: ModelMeta
    alpha: float
    catalogue: Catalogue
    cf: CFModel
    content: ContentModel
    cf_positions: IntArray  # catalogue row of each CF item
    popularity: FloatArray  # per catalogue row, in [0, 1]

    @classmethod
    def assemble(
        cls, meta: ModelMeta, alpha: float, catalogue: Catalogue, cf: CFModel, content: ContentModel
    ) -> HybridModel:
        cf_positions = catalogue.positions(cf.item_ids)
        counts = np.zeros(len(catalogue.book_ids), dtype=np.float32)
        counts[cf_positions] = np.diff(cf.user_items.tocsc().indptr)  # users per book
        top = counts.max() if len(counts) else 0.0
        popularity = counts / top if top > 0 else counts
        return cls(meta, alpha, catalogue, cf, content, cf_positions, popularity)

    def recommend(
        self, user_id: int, limit: int, fresh_history: Sequence[tuple[int, float | None]] = ()
    ) -> Recommendations:
        """Top `limit` books the user has not interacted with, best first.

        `fresh_history` is (book_id, rating or None) known outside the model, used for users the CF model lacks.
        """
        row = self.cf.user_row(user_id)
        if row is not None:
            item_positions, weights = self.cf.history(row)
            seen = self.cf_positions[item_positions]
        else:
            ids = [book_id for book_id, _ in fresh_history]
            seen = self.catalogue.positions(ids)
            known = dict(fresh_history)
            weights = interaction_weights(
                [np.nan if (r := known[int(self.catalogue.book_ids[p])]) is None else r for p in seen]
            )

        n = len(self.catalogue.book_ids)
        candidates = np.ones(n, dtype=bool)
        candidates[seen] = False
        content = _normalise(self.content.scores(seen, weights), candidates)
        cf = np.zeros(n, dtype=np.float32)
        if row is not None:
            raw = np.full(n, np.nan, dtype=np.float32)
            raw[self.cf_positions] = self.cf.scores(row)
            raw[np.isnan(raw)] = np.nanmin(raw) if np.any(~np.isnan(raw)) else 0.0
            cf = _normalise(raw, candidates)
            strategy, blended = Strategy.HYBRID, self.alpha * cf + (1.0 - self.alpha) * content
        elif len(seen) > 0:
            strategy, blended = Strategy.CONTENT, content
        else:
            strategy, blended = Strategy.POPULAR, self.popularity.copy()

        ranking = blended + _TIE_BREAK * self.popularity
        ranking[~candidates] = -np.inf
        top = _top_k(ranking, min(limit, int(candidates.sum())))
        return Recommendations(
            strategy=strategy,
            books=[
                ScoredBook(
                    book_id=int(self.catalogue.book_ids[p]),
                    title=self.catalogue.titles[p],
                    authors=self.catalogue.authors[p],
                    score=float(blended[p]),
                    cf_score=float(cf[p]),
                    content_score=float(content[p]),
                )
                for p in top
            ],
        )


def _normalise(scores: FloatArray, candidates: npt.NDArray[np.bool_]) -> FloatArray:
    """Min-max to [0, 1] over the candidates, so that CF and content scores can be blended."""
    if not candidates.any():
        return np.zeros_like(scores)
    low, high = scores[candidates].min(), scores[candidates].max()
    if high - low <= 1e-12:
        return np.zeros_like(scores)
    return np.clip((scores - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _top_k(ranking: FloatArray, k: int) -> IntArray:
    if k <= 0:
        return np.zeros(0, dtype=np.int32)
    part = np.argpartition(-ranking, k - 1)[:k]
    return part[np.argsort(-ranking[part], kind="stable")].astype(np.int32)


def warm(model: HybridModel) -> None:
    """Runs each code path once, so the first real request after a swap pays no first-call costs."""
    model.recommend(user_id=0, limit=1)
    if model.cf.num_users:
        model.recommend(user_id=int(model.cf.user_ids[0]), limit=1)
