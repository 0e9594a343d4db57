"""What a request may restrict its answer to, and the book facts that decide it.

A `Filters` (genres, books to leave out, a published-year range) becomes a predicate: a mask over a model's
catalogue that every ranking path takes before its top-k (model/ranking.py's exact product, model/index.py's
search), so that an answer has `limit` books while that many match. Books hidden by the catalogue (unavailable)
are left out of every answer the same way. `max_per_author` is not a predicate but a cap applied while the ranking
is read (`capped`).

`BookFacts` is what the filters read of each book (its genres, year, first author and whether it is available),
by book id, from the database: the serving process keeps it current as books change, so that a hidden book is gone
from every answer within seconds, without a retrain. `Facts.over` aligns it with one model's catalogue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt

from recommender.model.dataset import Book, lookup

IntArray = npt.NDArray[np.int32]
BoolArray = npt.NDArray[np.bool_]

NO_YEAR = np.iinfo(np.int32).min  # a book without a published year: never inside a year range


@dataclass(frozen=True)
class Filters:
    genres: tuple[str, ...] = ()  # any of these (case-insensitive); empty: every genre
    exclude: tuple[int, ...] = ()  # book ids never in the answer
    min_year: int | None = None  # published in or after
    max_year: int | None = None  # published in or before
    max_per_author: int | None = None  # books of one (first) author in one answer

    @property
    def restricts(self) -> bool:
        """Whether it is a predicate at all (the author cap is not one)."""
        return bool(self.genres or self.exclude) or self.min_year is not None or self.max_year is not None


NO_FILTERS = Filters()


def genre_key(genre: str) -> str:
    return genre.strip().lower()


def author_key(authors: str) -> str:
    """A book's first author, the unit of `max_per_author` (a series shares it)."""
    return authors.split(",")[0].strip().lower()


@dataclass(frozen=True)
class BookFacts:
    """Per book id (sorted), what filters read of it."""

    book_ids: IntArray
    years: IntArray  # NO_YEAR where unknown
    available: BoolArray
    genre_books: dict[str, IntArray] = field(default_factory=dict)  # genre key -> sorted book ids

    @classmethod
    def of(cls, books: Iterable[Book]) -> BookFacts:
        latest = {book.book_id: book for book in books}
        ordered = [latest[book_id] for book_id in sorted(latest)]
        genres: dict[str, list[int]] = {}
        for book in ordered:
            for genre in {genre_key(g) for g in book.genres}:
                genres.setdefault(genre, []).append(book.book_id)
        return cls(
            np.array([b.book_id for b in ordered], dtype=np.int32),
            np.array([NO_YEAR if b.published_year is None else b.published_year for b in ordered], dtype=np.int32),
            np.array([b.available for b in ordered], dtype=bool),
            {genre: np.array(ids, dtype=np.int32) for genre, ids in genres.items()},
        )

    def with_books(self, books: Sequence[Book]) -> BookFacts:
        """These facts with `books` added or replaced (what a change notice says)."""
        if not books:
            return self
        changed = {b.book_id for b in books}
        kept = ~np.isin(self.book_ids, list(changed))
        ids, years, available = self.book_ids[kept], self.years[kept], self.available[kept]
        ordered = sorted({b.book_id: b for b in books}.values(), key=lambda b: b.book_id)
        new = BookFacts.of(ordered)
        merged_ids = np.concatenate([ids, new.book_ids])
        order = np.argsort(merged_ids, kind="stable")
        genres = {g: v[~np.isin(v, list(changed))] for g, v in self.genre_books.items()}
        for genre, ids_of in new.genre_books.items():
            genres[genre] = np.union1d(genres.get(genre, np.zeros(0, np.int32)), ids_of).astype(np.int32)
        return BookFacts(
            merged_ids[order],
            np.concatenate([years, new.years])[order],
            np.concatenate([available, new.available])[order],
            {g: v for g, v in genres.items() if len(v)},
        )

    def hiding(self, book_ids: Sequence[int]) -> BookFacts:
        """These facts with `book_ids` hidden (erased books: no other fact of theirs counts)."""
        return self.with_books([Book(book_id, "", available=False) for book_id in book_ids])

    def over(self, catalogue_ids: IntArray) -> Facts:
        """These facts aligned with a catalogue (sorted ids): per position. A book the facts do not know (added
        after they were read) counts as available, of no genre and no year."""
        if not len(self.book_ids):
            unknown = np.zeros(len(catalogue_ids), dtype=bool)
            return Facts(catalogue_ids, np.full(len(catalogue_ids), NO_YEAR, np.int32), unknown, self.genre_books)
        rows, known = lookup(self.book_ids, catalogue_ids)
        years = np.where(known, self.years[rows], NO_YEAR).astype(np.int32)
        return Facts(catalogue_ids, years, known & ~self.available[rows], self.genre_books)


@dataclass(frozen=True)
class Facts:
    """Book facts by catalogue position (one model's catalogue)."""

    catalogue_ids: IntArray
    years: IntArray
    hidden: BoolArray
    genre_books: dict[str, IntArray]

    @cached_property
    def hides_any(self) -> bool:
        return bool(self.hidden.any())

    def hides(self, book_id: int) -> bool:
        """Whether the book is hidden (or erased)."""
        found = self._positions(np.array([book_id], dtype=np.int32))
        return bool(len(found) and self.hidden[found[0]])

    def allowed(self, filters: Filters) -> BoolArray | None:
        """The catalogue positions an answer may hold: not hidden, and within `filters`; None when that is every
        position."""
        if not filters.restricts and not self.hides_any:
            return None
        mask = ~self.hidden
        if filters.genres:
            wanted = np.zeros(len(self.catalogue_ids), dtype=bool)
            for genre in {genre_key(g) for g in filters.genres}:
                wanted[self._positions(self.genre_books.get(genre, np.zeros(0, np.int32)))] = True
            mask &= wanted
        if filters.exclude:
            mask[self._positions(np.asarray(filters.exclude, dtype=np.int32))] = False
        if filters.min_year is not None:
            mask &= self.years >= filters.min_year
        if filters.max_year is not None:
            mask &= (self.years <= filters.max_year) & (self.years != NO_YEAR)
        return mask

    def _positions(self, book_ids: IntArray) -> IntArray:
        rows, found = lookup(self.catalogue_ids, book_ids)
        return rows[found]


def capped(rank: Callable[[int], IntArray], authors: IntArray, limit: int, cap: int, available: int) -> IntArray:
    """The best `limit` positions with at most `cap` of one author (codes per position in `authors`), reading
    the ranking `rank(n)` (its n best, best first) deeper while the cap leaves the answer short and more books
    could fill it (`available`: how many the ranking can return at most)."""
    n = min(max(limit * 3, limit + 20), available)
    while True:
        best = rank(n)
        counts: dict[int, int] = {}
        picked = []
        for position in best.tolist():
            author = int(authors[position])
            if counts.get(author, 0) < cap:
                counts[author] = counts.get(author, 0) + 1
                picked.append(position)
                if len(picked) == limit:
                    break
        if len(picked) == limit or n >= available or len(best) < n:
            return np.array(picked, dtype=np.int32)
        n = min(n * 4, available)
