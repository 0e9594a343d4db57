"""What training reads, in PostgreSQL: one consistent snapshot of books and interactions (PostgreSQL's binary COPY
straight into NumPy arrays), and what changed after a snapshot (what a model trained on it misses)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np
import numpy.typing as npt

from recommender.model.dataset import Book, TrainingData
from recommender.storage.catalogue import SELECT_BOOKS, book_of
from recommender.storage.db import BULK_SECONDS, Database

# Rows changed by a transaction the snapshot $1 does not see; every transaction before its xmin is seen, so the
# index on changed_xid narrows the rows to look at.
UNSEEN = (
    "changed_xid >= pg_snapshot_xmin($1::text::pg_snapshot)::text::bigint "
    "AND NOT pg_visible_in_snapshot(changed_xid::text::xid8, $1::text::pg_snapshot)"
)


class SnapshotStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def load_training_data(self) -> TrainingData:
        """One consistent snapshot of books and interactions (a single REPEATABLE READ transaction)."""
        async with self._db.connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            # The transaction's own snapshot, taken by its first statement: what this data includes, exactly.
            snapshot = await conn.fetchval("SELECT pg_current_snapshot()::text")
            book_rows = await conn.fetch(f"{SELECT_BOOKS} ORDER BY book_id")
            # PostgreSQL's binary COPY, read straight into NumPy: no Python object per interaction.
            chunks: list[bytes] = []
            await conn.copy_from_query(
                "SELECT user_id, book_id, coalesce(rating, 'NaN')::real, extract(epoch FROM occurred_at)::float8 "
                "FROM interactions",
                output=_append_to(chunks),
                format="binary",
                timeout=BULK_SECONDS,
            )
            rows = _binary_copy_rows(b"".join(chunks), _INTERACTION_ROW)
        books = [book_of(row) for row in book_rows]
        return TrainingData(
            books=books,
            user_ids=rows["user_id"].astype(np.int32),
            book_ids=rows["book_id"].astype(np.int32),
            ratings=rows["rating"].astype(np.float32),
            timestamps=rows["time"].astype(np.float64),
            snapshot=snapshot,
        )

    async def users_changed_since(self, snapshot: str) -> list[int]:
        """Users with interactions added or changed by transactions `snapshot` (a pg_snapshot as text) does not
        see, or erased since: exactly what a model trained on that snapshot misses."""
        rows = await self._db.fetch(
            f"SELECT user_id FROM interactions WHERE {UNSEEN} UNION SELECT user_id FROM erased_users WHERE {UNSEEN}",
            snapshot,
        )
        return [row["user_id"] for row in rows]

    async def users_erased_since(self, snapshot: str) -> list[int]:
        """Users erased by transactions `snapshot` does not see (a model trained on it still has them)."""
        rows = await self._db.fetch(f"SELECT user_id FROM erased_users WHERE {UNSEEN}", snapshot)
        return [row["user_id"] for row in rows]

    async def books_erased_since(self, snapshot: str) -> list[int]:
        """Books erased by transactions `snapshot` does not see (a model trained on it still has them)."""
        rows = await self._db.fetch(f"SELECT book_id FROM erased_books WHERE {UNSEEN}", snapshot)
        return [row["book_id"] for row in rows]

    async def books_changed_since(self, snapshot: str) -> list[Book]:
        """Books added or changed by transactions `snapshot` does not see."""
        return await self._books(f"WHERE {UNSEEN}", snapshot)

    async def _books(self, where: str, *args: object) -> list[Book]:
        rows = await self._db.fetch(f"{SELECT_BOOKS} {where} ORDER BY book_id", *args)
        return [book_of(row) for row in rows]


# One row of the snapshot in PostgreSQL's binary COPY format: a field count, then each field's length and value,
# big-endian; every field has a fixed width and no NULL, so the rows are records of one NumPy dtype.
_INTERACTION_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("user_id_length", ">i4"), ("user_id", ">i4"),
        ("book_id_length", ">i4"), ("book_id", ">i4"),
        ("rating_length", ">i4"), ("rating", ">f4"),
        ("time_length", ">i4"), ("time", ">f8"),
    ]
)  # fmt: skip
_COPY_HEADER = 19  # signature (11 bytes), flags (4), header extension length (4, zero)
_COPY_TRAILER = 2  # a field count of -1


def _append_to(chunks: list[bytes]) -> Callable[[bytes], Awaitable[None]]:
    async def append(chunk: bytes) -> None:
        chunks.append(chunk)

    return append


def _binary_copy_rows(data: bytes, row: np.dtype[np.void]) -> npt.NDArray[np.void]:
    count = (len(data) - _COPY_HEADER - _COPY_TRAILER) // row.itemsize
    if count < 0 or _COPY_HEADER + count * row.itemsize + _COPY_TRAILER != len(data):
        raise ValueError("the snapshot is not a binary COPY stream of the expected rows")
    return np.frombuffer(data, dtype=row, offset=_COPY_HEADER, count=count)
