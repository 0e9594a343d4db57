"""The one ranking of the service, what a reader is served and what evaluation and the promotion gate measure.

A reader's score of a book blends three parts, each standardised over the reader's candidates (the books they do
not have): CF (their factors' inner product with the book's item factors; 0, ALS's prediction for what nobody
read, for a book CF does not have), content (their profile's cosine similarity with the book's content vector) and
popularity, weighed by `Blend`, with popularity again as the tie-break. Standardising is linear, so the whole
blend is ONE inner product of a query vector with the book's row [item factors, content vector, popularity]:

    score(b) = sum_i w_i (x_i(b) - mean_i) / sd_i + TIE_BREAK pop(b)
             = q . row(b) + a constant,   q = [u w_cf/sd_cf, p w_content/sd_content, w_pop/sd_pop + TIE_BREAK]

and the means and spreads over the candidates come from catalogue statistics (column sums and Gram matrices),
less the reader's own books: no pass over the catalogue. Ranking is then one product with every book's row
(model/shortlist.py: a single request's scans the rows' 8-bit codes, model/scan.py; a batch's is one float32
matrix product), or a catalogue index's candidates; either way the candidates' scores are computed exactly, in
float64 from the parts, and those choose and order the answer. So an answer is the same alone or in a batch, scanned or
multiplied: only the shortlist sees the product's error, and it keeps every book the error could hide.

Why z-scores: CF scores are heavy-tailed (a few books stand far above the rest), content similarities are not.
Standardised, a clear CF favourite keeps its lead and content decides among near-ties; min-max scaling let weak
content evidence outvote CF. Measured (NDCG@10, same split, alpha 0.6): Goodreads sample 0.289 z-score vs 0.275
min-max vs 0.283 CF alone; MovieLens latest-small 0.302 vs 0.257 vs 0.291.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from recommender.model.compiled import blended, dots, item_dots, part_statistics
from recommender.model.scan import Quantised

IntArray = npt.NDArray[np.int32]
FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
Float64Array = npt.NDArray[np.float64]
Number = TypeVar("Number", float, Float64Array)  # one reader's or many readers' (`Blend`)

# Rows per step of the catalogue statistics.
SUMS_BLOCK = 65_536

# Popularity only breaks ties (equal blended scores): it never outweighs a real score difference.
TIE_BREAK = 1e-6


class Mode(StrEnum):
    """What to rank by: the served blend, or one of its parts (evaluation measures each)."""

    HYBRID = "hybrid"
    CF = "cf"
    CONTENT = "content"
    POPULAR = "popular"


@dataclass(frozen=True)
class BlendWeights:
    """Per reader: the weights of the standardised CF, content and popularity scores in their ranking."""

    cf: Float64Array
    content: Float64Array
    popular: Float64Array


@dataclass(frozen=True)
class Blend:
    """How the parts are weighed, the one formula every ranking uses (one reader or many: arrays broadcast).

    For a reader CF knows: `a * cf + (1 - a) * content`, where `a = alpha * liked / (liked + cf_prior)`: CF
    factors fitted on a few books say little, so content fills in for a reader with three books and alpha holds
    for one with fifty. That blend is then mixed with popularity in proportion `popularity_prior / (popularity_prior
    + liked)`. A reader CF does not know (no history it has, or a book without factors in `similar`): content alone.
    """

    alpha: float
    popularity_prior: float = 0.0
    cf_prior: float = 0.0

    def weights(self, liked: npt.ArrayLike, has_cf: npt.ArrayLike) -> BlendWeights:
        known = np.asarray(has_cf, dtype=bool).astype(np.float64)
        return BlendWeights(*self._formula(np.asarray(liked, dtype=np.float64), known))

    def of_mode(self, mode: Mode, liked: int, has_cf: bool) -> tuple[float, float, float]:
        """(cf, content, popularity) weights of a reader ranked by `mode`."""
        if mode is Mode.CF:
            return 1.0 if has_cf else 0.0, 0.0, 0.0
        if mode is Mode.CONTENT:
            return 0.0, 1.0, 0.0
        if mode is Mode.POPULAR:
            return 0.0, 0.0, 1.0
        return self._formula(float(liked), 1.0 if has_cf else 0.0)  # one reader: in floats, the same arithmetic

    def _formula(self, liked: Number, known: Number) -> tuple[Number, Number, Number]:
        """(cf, content, popularity) of readers with `liked` books, `known` 1 where CF knows them (else 0)."""
        trust = _share(liked, self.popularity_prior)
        cf = self.alpha * _share(liked, self.cf_prior) * known
        return trust * cf, trust * (1.0 - cf), 1.0 - trust


def _share(liked: Number, prior: float) -> Number:
    """liked / (liked + prior): 1 without a prior."""
    return liked / (liked + prior) if prior > 0 else liked * 0.0 + 1.0


@dataclass(frozen=True)
class BookRows:
    """Every catalogue book's row (its item factors, zero where CF has none; its content vector; its popularity),
    and the catalogue's statistics that standardise the parts without a pass over it."""

    item_factors: FloatArray  # CF items x k
    item_of_book: IntArray  # per catalogue row, its CF item (-1: none)
    content: FloatArray  # catalogue rows x d, unit rows
    popularity: FloatArray  # per catalogue row, in [0, 1]

    @property
    def num_books(self) -> int:
        return len(self.popularity)

    @property
    def width(self) -> tuple[int, int]:
        """(k, d): the widths of the CF and content parts of a row."""
        return self.item_factors.shape[1], self.content.shape[1]

    @cached_property
    def cf_sums(self) -> tuple[Float64Array, Float64Array]:
        """The item factors' column sums and Gram matrix (books without factors add nothing)."""
        factors = self.item_factors.astype(np.float64)
        return factors.sum(axis=0), factors.T @ factors

    @cached_property
    def content_sums(self) -> tuple[Float64Array, Float64Array]:
        width = self.content.shape[1]
        total, gram = np.zeros(width), np.zeros((width, width))
        for start in range(0, self.num_books, SUMS_BLOCK):  # in blocks: a float64 copy of 1M rows is 1 GB
            vectors = self.content[start : start + SUMS_BLOCK].astype(np.float64)
            total += vectors.sum(axis=0)
            gram += vectors.T @ vectors
        return total, gram

    @cached_property
    def popularity_sums(self) -> tuple[float, float]:
        values = self.popularity.astype(np.float64)
        return float(values.sum()), float(values @ values)

    @cached_property
    def popular_order(self) -> IntArray:
        """Every row, most popular first (ties: the lower row first)."""
        return np.argsort(-self.popularity, kind="stable").astype(np.int32)

    @cached_property
    def columns(self) -> FloatArray:
        """Every book's row [item factors (zero where CF has none), content vector, popularity], transposed:
        (k + d + 1) x books, contiguous (OpenBLAS's fastest layout for a vector against them)."""
        k, d = self.width
        columns = np.zeros((k + d + 1, self.num_books), dtype=np.float32)
        has = np.flatnonzero(self.item_of_book >= 0)
        columns[:k, has] = self.item_factors[self.item_of_book[has]].T
        columns[k : k + d] = self.content.T
        columns[-1] = self.popularity
        return columns

    @cached_property
    def quantised(self) -> Quantised:
        """The columns in 8-bit codes: what a single request's scan reads (model/scan.py)."""
        return Quantised.of(self.columns)

    @cached_property
    def longest(self) -> float:
        """The largest norm of a book's row (what bounds the float32 product's rounding)."""
        return float(np.sqrt(np.square(self.columns, dtype=np.float64).sum(axis=0)).max(initial=0.0))

    def unit(self) -> BookRows:
        """These rows with the item factors scaled to unit length: their products are cosine similarities."""
        norms = np.linalg.norm(self.item_factors, axis=1, keepdims=True)
        unit = (self.item_factors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        return BookRows(unit, self.item_of_book, self.content, self.popularity)

    def cf_of(self, positions: IntArray, user: FloatArray) -> Float64Array:
        """CF scores of the books at `positions` (0 where CF has no factors), in float64 (model/compiled.py's
        `dots`: each the same whatever the other rows)."""
        return item_dots(self.item_factors, self.item_of_book, positions, user)

    def content_of(self, positions: IntArray, profile: FloatArray) -> Float64Array:
        return dots(self.content, positions, profile)


@dataclass(frozen=True)
class Part:
    """One standardised part of a reader's score: z = (x - mean) * inverse, weighed by `weight`."""

    mean: float = 0.0
    inverse: float = 0.0  # 1 / standard deviation; 0 where the part has no spread (or is absent)
    weight: float = 0.0

    @property
    def scale(self) -> float:
        """What the part's raw score is multiplied by in the ranking's inner product."""
        return self.weight * self.inverse


@dataclass(frozen=True)
class Query:
    """One reader's ranking: the vector whose inner product with a book's row orders the books, the standardised
    parts it is made of, and what the scores shown are computed from."""

    vector: FloatArray  # k + d + 1
    cf: Part
    content: Part
    popular: Part
    user: FloatArray | None  # the reader's CF factors
    profile: FloatArray | None  # the reader's content profile, unit length
    seen: IntArray  # catalogue rows never recommended to this reader

    @property
    def offset(self) -> float:
        """What a book's product with `vector` adds to its exact score, beside TIE_BREAK times its popularity."""
        return sum(part.weight * part.mean * part.inverse for part in (self.cf, self.content, self.popular))


def query(
    rows: BookRows,
    seen: IntArray,
    user: FloatArray | None,
    profile: FloatArray | None,
    weights: tuple[float, float, float],
) -> Query:
    """The query vector of a reader with `seen` books (unique catalogue rows), CF factors `user` (None: CF does
    not know the reader) and content `profile` (None or zero: nothing liked), weighed (cf, content, popularity)."""
    norm = float(np.linalg.norm(profile)) if profile is not None else 0.0
    unit = (profile / norm).astype(np.float32) if profile is not None and norm > 0 and weights[1] else None
    sums = (*rows.cf_sums, *rows.content_sums, np.array(rows.popularity_sums))
    parts, vector = part_statistics(
        seen, _NONE if user is None else user, _NONE if unit is None else unit, np.array(weights),
        (rows.item_factors, rows.item_of_book, rows.content, rows.popularity), sums, TIE_BREAK,
    )  # fmt: skip
    cf, content, popular = (Part(*part) for part in parts.tolist())
    return Query(vector, cf, content, popular, user, unit, seen)


@dataclass(frozen=True)
class Scored:
    """Books of one answer, best first, with their blended score and its CF and content parts (z-scores)."""

    positions: IntArray
    scores: Float64Array
    cf: Float64Array
    content: Float64Array


def scored(rows: BookRows, q: Query, best: IntArray) -> Scored:
    """The books at `best` with their scores, computed apart from the ranking (float64, from the parts), and in
    the order of those scores: an answer always reads best first (the two orders differ only where float rounding
    meets a near-tie; popularity breaks ties)."""
    found = blended(rows.item_factors, rows.item_of_book, rows.content, rows.popularity, best, *exact_terms(q))
    return Scored(*found)


def exact_terms(q: Query) -> tuple[FloatArray, FloatArray, Float64Array]:
    """What model/compiled.py's `blended` scores a query's books from: its CF factors and content profile (empty
    where it has none) and per part (CF, content, popularity) its mean, inverse spread and weight."""
    user = _NONE if q.user is None else q.user
    profile = _NONE if q.profile is None else q.profile
    return user, profile, np.array([[p.mean, p.inverse, p.weight] for p in (q.cf, q.content, q.popular)])


_NONE = np.zeros(0, dtype=np.float32)  # a part the query lacks


def best_of(rows: BookRows, q: Query, candidates: IntArray, limit: int) -> Scored:
    """The `limit` best of `candidates` by their exact scores (`scored`), best first."""
    answer = scored(rows, q, candidates)
    return Scored(answer.positions[:limit], answer.scores[:limit], answer.cf[:limit], answer.content[:limit])


def popular_top(rows: BookRows, k: int, allowed: BoolArray | None = None) -> IntArray:
    """The `k` most popular books (for a reader with no history) among those `allowed`, ties to the lower row."""
    order = rows.popular_order if allowed is None else rows.popular_order[allowed[rows.popular_order]]
    return order[: min(k, len(order))]
