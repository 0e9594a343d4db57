"""The plain data that training reads: one consistent snapshot of the catalogue and the interactions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recommender.model.series import series_of


def lookup(
    sorted_ids: npt.NDArray[np.int32], ids: npt.ArrayLike
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.bool_]]:
    """For each of `ids`, its row in `sorted_ids` and whether it is there (the row is meaningless where not)."""
    wanted = np.asarray(ids, dtype=np.int32)
    if len(sorted_ids) == 0:
        return np.zeros(len(wanted), dtype=np.int32), np.zeros(len(wanted), dtype=bool)
    rows = np.minimum(np.searchsorted(sorted_ids, wanted), len(sorted_ids) - 1).astype(np.int32)
    return rows, sorted_ids[rows] == wanted


@dataclass(frozen=True)
class Book:
    book_id: int
    title: str
    authors: str = ""
    description: str = ""
    genres: tuple[str, ...] = ()
    published_year: int | None = None
    available: bool = True  # False: hidden from every answer (kept in the data; it can come back)
    # Its series and place in it ("" and None: as its title says, model/series.py).
    series: str = ""
    series_position: float | None = None

    def in_series(self) -> tuple[str, float] | None:
        """Its series and place in it: as stated, else as its title says (model/series.py); None: in none."""
        return series_of(self.title, self.series, self.series_position)

    def text(self) -> str:
        """What the content model reads; genres are repeated since they carry the most topical signal."""
        genres = " ".join(self.genres)
        return f"{self.title} {self.authors} {self.description} {genres} {genres}"


@dataclass(frozen=True)
class Interaction:
    user_id: int
    book_id: int
    rating: float | None = None  # 0-5; None for a read or a click without a rating
    timestamp: float | None = None  # Unix seconds; None means now


@dataclass(frozen=True)
class TrainingData:
    """One row per (user, book): the interactions as parallel arrays."""

    books: list[Book]
    user_ids: npt.NDArray[np.int32]
    book_ids: npt.NDArray[np.int32]
    ratings: npt.NDArray[np.float32]  # NaN where the user did not rate the book
    timestamps: npt.NDArray[np.float64]  # Unix seconds of the first interaction
    snapshot: str = ""  # the database snapshot it was read in (PostgreSQL's pg_snapshot), "" when not from one

    @property
    def num_interactions(self) -> int:
        return int(self.user_ids.shape[0])

    @classmethod
    def from_interactions(cls, books: list[Book], interactions: list[Interaction]) -> TrainingData:
        return cls(
            books=books,
            user_ids=np.array([i.user_id for i in interactions], dtype=np.int32),
            book_ids=np.array([i.book_id for i in interactions], dtype=np.int32),
            ratings=np.array([np.nan if i.rating is None else i.rating for i in interactions], dtype=np.float32),
            timestamps=np.array([i.timestamp or 0.0 for i in interactions], dtype=np.float64),
        )

    def only_books(self, book_ids: npt.NDArray[np.int32]) -> TrainingData:
        """The interactions with books in `book_ids` (the catalogue); others cannot be recommended or explained."""
        keep = np.isin(self.book_ids, book_ids)
        if keep.all():
            return self
        return self.subset(keep)

    def subset(self, keep: npt.NDArray[np.bool_]) -> TrainingData:
        """The same catalogue with the interactions where `keep` is True."""
        return TrainingData(
            self.books,
            self.user_ids[keep],
            self.book_ids[keep],
            self.ratings[keep],
            self.timestamps[keep],
            self.snapshot,
        )
