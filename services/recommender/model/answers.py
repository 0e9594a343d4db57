"""What the model answers with, and what it knows of one reader: plain data that the model's modules share (the
served model in model/hybrid.py, "because you read" in model/explain.py, similar books in model/similar.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from recommender.model.cf import CFModel, FloatArray, IntArray
from recommender.model.ranking import BoolArray

# (book_id, rating or None) of everything a user did, read from the database.
ReaderEvents = Sequence[tuple[int, float | None]]


class Strategy(StrEnum):
    HYBRID = "hybrid"  # the user is in the CF model
    CONTENT = "content"  # history unknown to CF: content similarity to it
    POPULAR = "popular"  # no history at all


class Reason(NamedTuple):
    """One of the reader's own books that a recommendation comes from. Immutable records of an answer are named
    tuples, not frozen dataclasses: an answer builds some forty, and a frozen dataclass's every field is set through
    object.__setattr__ (0.9 against 0.35 us each)."""

    book_id: int
    title: str
    # "cf": readers who liked it liked the recommended book; "content": the two read alike; "author": more by an
    # author of it; "series": the next volume of its series
    part: str
    share: float  # its share of what the reader's books gave the recommendation, 0-1
    text: str = ""  # for "author" and "series", what it says


class ScoredBook(NamedTuple):
    book_id: int
    title: str
    authors: str
    score: float
    cf_score: float
    content_score: float
    because: tuple[Reason, ...] = ()
    series: tuple[str, float] | None = None  # its series and place in it


@dataclass(frozen=True)
class Request:
    user_id: int
    limit: int
    events: ReaderEvents | None = None  # everything the user did, when it is newer than the model
    allowed: BoolArray | None = None  # the catalogue positions the answer may hold (model/filters.py); None: all
    max_per_author: int | None = None  # books of one author in the answer


@dataclass(frozen=True)
class Recommendations:
    strategy: Strategy
    books: list[ScoredBook]


@dataclass(frozen=True)
class Reader:
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
