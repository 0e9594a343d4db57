"""What a reader's history says of a book beyond the blend: the authors they come back to and the series they
read in order. Inverted lists from authors and series to books, so a reader's signals cost by their history, not
by the catalogue; applied to a shortlist of the blend's candidates (model/answering.py).

A candidate's signals: `author`, log(1 + the reader's liked books by its author (the most-read of its authors));
`next`, 1 for the next unread volume of a series the reader started (the first whole-numbered one after the
furthest volume they read); `held`, 1 for a later unread volume of such a series. Within a series the reader
started, the unread volumes after the furthest read always come in order: a later volume never ranks above an
earlier one the answer could hold (`ReaderSignals.in_order`).

Why only series the reader started: ordering the volumes of every series (volume one before the rest for a reader
who never opened it) cost 1 to 10% of NDCG@10 on the Goodreads sample, whose readers rate later volumes without
the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recommender.model.dataset import lookup
from recommender.model.ranking import BoolArray, Float64Array, IntArray
from recommender.model.series import series_key

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

    def authors_of(self, row: int) -> IntArray:
        """The author codes of the book at `row`."""
        pointers = self.book_authors.indptr
        return np.asarray(self.book_authors.indices[pointers[row] : pointers[row + 1]], dtype=np.int32)

    def volumes_of(self, series: int) -> IntArray:
        """The rows of a series' books, in series order."""
        pointers = self.series_books.indptr
        return np.asarray(self.series_books.indices[pointers[series] : pointers[series + 1]], dtype=np.int32)

    @property
    def empty(self) -> bool:
        """No author with two books and no series: nothing to say beyond the blend."""
        return not len(self.series_names) and not (np.diff(self.author_books.indptr) > 1).any()


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

    authors: IntArray  # sorted author codes
    liked_by: IntArray  # per author, the reader's liked books by them
    started: IntArray  # sorted series codes the reader has a volume of
    furthest: Float64Array  # per started series, the furthest place the reader read
    following: IntArray  # per started series, the row of its next volume (-1: none left)

    @classmethod
    def of(cls, signals: BookSignals, seen: IntArray, weights: npt.NDArray[np.float32]) -> ReaderSignals:
        authors, counts = np.unique(gather(signals.book_authors, seen[weights > 0]), return_counts=True)
        started = np.unique(signals.series[seen])
        started = started[started >= 0]
        sizes = np.diff(signals.series_books.indptr)[started]
        books = gather(signals.series_books, started)  # series after series, each in series order
        group = np.repeat(np.arange(len(started)), sizes)
        read = lookup(np.unique(seen), books)[1]
        places = signals.position[books]
        furthest = np.zeros(len(started))
        np.maximum.at(furthest, group[read], places[read])
        whole = (places == np.floor(places)) & (places >= 1) & (places > furthest[group]) & ~read
        following = np.full(len(started), -1, dtype=np.int32)
        following[group[whole][::-1]] = books[whole][::-1]  # the last written is each series' first such volume
        return cls(authors.astype(np.int32), counts.astype(np.int32), started, furthest, following)

    def liked_by_author(self, code: int) -> int:
        """How many of the reader's liked books the author wrote (0: none)."""
        at, found = lookup(self.authors, [code])
        return int(self.liked_by[at[0]]) if found[0] else 0

    def candidates(self, signals: BookSignals) -> IntArray:
        """Books the signals could raise: by the reader's most-read authors, and the next volumes."""
        most = self.authors[np.argsort(-self.liked_by, kind="stable")[:MOST_AUTHORS]]
        return np.union1d(gather(signals.author_books, most), self.following[self.following >= 0]).astype(np.int32)

    def features(self, signals: BookSignals, rows: IntArray) -> tuple[Float64Array, Float64Array, Float64Array]:
        """(author, next, held) of the books at `rows` (held: a later volume of a started series than its next)."""
        group, started = self._series_of(signals, rows)
        entry = np.where(started, self.following[group], -1) if len(self.started) else np.full(len(rows), -1)
        following = (entry >= 0) & (entry == rows)
        held = (entry >= 0) & (signals.position[rows] > signals.position[np.maximum(entry, 0)])
        return self._author(signals, rows), following.astype(np.float64), held.astype(np.float64)

    def _series_of(self, signals: BookSignals, rows: IntArray) -> tuple[IntArray, npt.NDArray[np.bool_]]:
        """Per row, the index of its series among those started, and whether it is one."""
        return lookup(self.started, signals.series[rows])  # (-1, no series, is never among them)

    def _author(self, signals: BookSignals, rows: IntArray) -> Float64Array:
        found = np.zeros(len(rows))
        if not len(self.authors) or not len(rows):
            return found
        counts = np.diff(signals.book_authors.indptr)[rows]
        codes = gather(signals.book_authors, rows)
        at, known = lookup(self.authors, codes)
        liked = np.where(known, self.liked_by[at], 0)
        has = np.flatnonzero(counts > 0)
        if len(has):
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[has]
            found[has] = np.log1p(np.maximum.reduceat(liked, starts))
        return found

    def in_order(self, signals: BookSignals, rows: IntArray, scores: Float64Array) -> tuple[Float64Array, Float64Array]:
        """`scores` of `rows` with the unread volumes after the furthest read of each started series given their
        scores in series order (the best score to the earliest volume, and so on), and the key that orders equal
        scores: the volume's place in its series (0 for the other books)."""
        places = np.zeros(len(rows))
        if not len(self.started):
            return scores, places
        group, started = self._series_of(signals, rows)
        after = np.flatnonzero(started & (signals.position[rows] > self.furthest[group]))
        places[after] = signals.position[rows[after]]
        if len(after) < 2 or len(np.unique(group[after])) == len(after):
            return scores, places  # no series with two such volumes
        scores = scores.copy()
        for g in np.unique(group[after]).tolist():
            members = after[group[after] == g]
            by_place = members[np.lexsort((rows[members], places[members]))]
            scores[by_place] = np.sort(scores[members])[::-1]
        return scores, places


def gather(matrix: sp.csr_matrix, rows: npt.NDArray[np.integer]) -> IntArray:
    """The column indices of `rows` of a CSR matrix, row after row (scipy's row indexing costs tens of us)."""
    starts, ends = matrix.indptr[rows], matrix.indptr[np.asarray(rows) + 1]
    lengths = ends - starts
    if not lengths.sum():
        return np.zeros(0, dtype=np.int32)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.asarray(matrix.indices[offsets + np.arange(lengths.sum())], dtype=np.int32)


def allowed_of(rows: IntArray, seen: IntArray, mask: BoolArray | None) -> IntArray:
    """`rows` less the reader's books (`seen`: sorted, unique) and those the mask forbids."""
    rows = rows[~lookup(seen, rows)[1]]
    return rows if mask is None else rows[mask[rows]]
