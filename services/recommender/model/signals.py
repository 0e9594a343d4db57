"""What a reader's history says of a book beyond the blend: the authors they come back to and the series they
read in order. Inverted lists from authors and series to books, so a reader's signals cost by their history, not
by the catalogue; applied to a shortlist of the blend's candidates (model/answering.py).

A candidate's signals: `author`, log(1 + the reader's liked books by its author (the most-read of its authors));
`next`, 1 for the next unread volume of a series the reader started (the first whole-numbered one after the
furthest volume they read); `held`, 1 for a later unread volume of such a series. Within a series the reader
started, the unread volumes after the furthest read always come in order: a later volume never ranks above an
earlier one the answer could hold (model/signal_loops.py's `reranked`).

Why only series the reader started: ordering the volumes of every series (volume one before the rest for a reader
who never opened it) cost 1 to 10% of NDCG@10 on the Goodreads sample, whose readers rate later volumes without
the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recommender.model import signal_loops as loops
from recommender.model import signal_sources
from recommender.model.params import SignalWeights
from recommender.model.ranking import BookRows, BoolArray, Float64Array, IntArray, Query, Scored, exact_terms
from recommender.model.series import series_key
from recommender.model.shortlist import Shortlist

# The reader's authors whose books join the candidates, the most-read first: a history of hundreds of authors
# would otherwise put most of a catalogue in the shortlist.
MOST_AUTHORS = 20


@dataclass(frozen=True)
class BookSignals:
    """Per version: each book's authors and its place in a series, and the inverted lists back to books."""

    book_authors: sp.csr_matrix  # books x authors, 1 where the author wrote the book
    author_books: sp.csr_matrix  # authors x books
    series: IntArray  # per book, its series (-1: none)
    position: Float64Array  # per book, its place in its series (nan: none)
    series_books: sp.csr_matrix  # series x books, each row's books in series order
    author_names: list[str]
    series_names: list[str]

    @classmethod
    def of(cls, series_of_books: Sequence[tuple[str, float] | None], authors: Sequence[str]) -> BookSignals:
        """From each book's series and place (None: none) and its authors, comma-separated."""
        author_codes: dict[str, int] = {}
        author_names: list[str] = []
        indptr, indices = [0], []
        for text in authors:
            for name in dict.fromkeys(a.strip() for a in text.split(",") if a.strip()):
                key = name.lower()
                if key not in author_codes:
                    author_codes[key] = len(author_names)
                    author_names.append(name)
                indices.append(author_codes[key])
            indptr.append(len(indices))
        shape = (len(authors), len(author_names))
        book_authors = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=shape)
        series, position, series_names = _series(series_of_books)
        members = np.flatnonzero(series >= 0)
        order = members[np.lexsort((members, position[members], series[members]))]
        counts = np.bincount(series[order], minlength=len(series_names))
        series_books = sp.csr_matrix(
            (np.ones(len(order), dtype=np.float32), order, np.concatenate([[0], np.cumsum(counts)])),
            shape=(len(series_names), len(authors)),
        )
        return cls(book_authors, book_authors.T.tocsr(), series, position, series_books, author_names, series_names)

    @cached_property
    def by_book(self) -> tuple[IntArray, IntArray]:
        """Each book's authors as CSR pointers and codes (model/signal_loops.py's arrays)."""
        return _lists(self.book_authors)

    @cached_property
    def by_author(self) -> tuple[IntArray, IntArray]:
        """Each author's books as CSR pointers and rows."""
        return _lists(self.author_books)

    @cached_property
    def by_series(self) -> tuple[IntArray, IntArray]:
        """Each series' books in series order as CSR pointers and rows."""
        return _lists(self.series_books)

    @cached_property
    def empty(self) -> bool:
        """No author with two books and no series: nothing to say beyond the blend."""
        return not len(self.series_names) and not (np.diff(self.author_books.indptr) > 1).any()


def _lists(matrix: sp.csr_matrix) -> tuple[IntArray, IntArray]:
    return np.asarray(matrix.indptr, dtype=np.int32), np.asarray(matrix.indices, dtype=np.int32)


def _series(series_of_books: Sequence[tuple[str, float] | None]) -> tuple[IntArray, Float64Array, list[str]]:
    codes: dict[str, int] = {}
    names: list[str] = []
    series = np.full(len(series_of_books), -1, dtype=np.int32)
    position = np.full(len(series_of_books), np.nan)
    for row, found in enumerate(series_of_books):
        if found is None:
            continue
        key = series_key(found[0])
        if key not in codes:
            codes[key] = len(names)
            names.append(found[0])
        series[row], position[row] = codes[key], found[1]
    return series, position, names


@dataclass(frozen=True)
class ReaderSignals:
    """One reader's authors (with how many of their books the reader liked) and the series they started: how far
    they read in each, and its next volume."""

    seen: IntArray  # the reader's books, sorted, unique
    liked: IntArray  # the books they liked, in the order of their history
    authors: IntArray  # sorted author codes
    liked_by: IntArray  # per author, the reader's liked books by them
    started: IntArray  # sorted series codes the reader has a volume of
    furthest: Float64Array  # per started series, the furthest place the reader read
    following: IntArray  # per started series, the row of its next volume (-1: none left)

    @classmethod
    def of(cls, signals: BookSignals, seen: IntArray, weights: npt.NDArray[np.float32]) -> ReaderSignals:
        """From a reader's history (`seen`, in order) and its weights (above 0: liked). Their authors: the
        MOST_AUTHORS they liked most books of (ties: the lower code), the ones whose books join the candidates, so
        that no book outside the shortlist has an author signal it could not be raised by: an answer is then the
        same whatever its depth (its limit, a filter)."""
        book = (*signals.by_book, signals.series, signals.position, *signals.by_series)
        seen, liked, authors, liked_by, *series = loops.reader(seen, weights, book)
        if len(authors) > MOST_AUTHORS:
            top = np.sort(np.argsort(-liked_by, kind="stable")[:MOST_AUTHORS])
            authors, liked_by = authors[top], liked_by[top]
        return cls(seen, liked, authors, liked_by, *series)

    def best(
        self,
        signals: BookSignals,
        weights: SignalWeights,
        rows: BookRows,
        q: Query,
        listed: Shortlist,
        counts: tuple[int, int],
        allowed: BoolArray | None,
    ) -> Scored:
        """The `limit` best (`counts`: depth, limit) of the blend's `depth` best among the `listed` rows and the
        books the reader's signals could raise, by the blend's exact score plus the weighed signals, the volumes of
        each series the reader started in order (ties: the earlier volume, then the more popular book), best first
        (model/signal_loops.py's `best`). `allowed`: the rows the answer may hold (None: all)."""
        depth, limit = counts
        book = (*signals.by_book, *signals.by_author, signals.series, signals.position)
        found = loops.best(
            listed.rows, NO_PRODUCT if listed.values is None else listed.values, (listed.margin, listed.outside),
            NO_MASK if allowed is None else allowed, np.array([weights.author, weights.next, weights.held]),
            (MOST_AUTHORS, depth, limit),
            (self.seen, self.authors, self.liked_by, self.started, self.furthest, self.following), book,
            (rows.item_factors, rows.item_of_book, rows.content, rows.popularity),
            (*exact_terms(q), q.offset, q.vector),
        )  # fmt: skip
        return Scored(*found)

    def sources(self, signals: BookSignals, rows: IntArray) -> Sources:
        """Per row, its author and next signals and the reader's books behind them (`Sources`)."""
        found = signal_sources.sources(
            np.asarray(rows, dtype=np.int32), self.liked, self.seen,
            (self.authors, self.liked_by, self.started, self.following),
            (*signals.by_book, signals.series, signals.position), *signals.by_series,
        )  # fmt: skip
        return Sources(*found)


@dataclass(frozen=True)
class Sources:
    """Per book, what the reader's signals say of it and the reader's books behind that."""

    author: Float64Array  # the author signal
    following: Float64Array  # 1: the next volume of a series the reader started
    author_code: IntArray  # of its authors, the one the reader liked most books of (-1: none)
    liked_by: IntArray  # how many
    by_author: IntArray  # the first of the reader's liked books by them (-1: none)
    furthest_read: IntArray  # of its series, the furthest volume the reader read (-1: not its next volume)


NO_MASK = np.zeros(0, dtype=np.bool_)  # no mask: every book allowed
NO_PRODUCT = np.zeros(0, dtype=np.float32)  # no product: the catalogue index's candidates
