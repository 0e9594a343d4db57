"""All SQL of the service: migrations, the training snapshot, user histories, imports and the demo seed."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from importlib import resources
from types import TracebackType

import asyncpg
import numpy as np

from recommender.model.dataset import Book, Interaction, TrainingData

log = logging.getLogger(__name__)

# One lock id for schema changes and the demo seed, so that several processes starting together take turns.
_SCHEMA_LOCK = 0x7265636F  # "reco"


class Database:
    """A connection pool and the queries the service runs; `async with Database.connect(dsn) as db:`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, dsn: str, *, max_size: int = 4) -> Database:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max_size, command_timeout=60)
        return cls(pool)

    async def close(self) -> None:
        await self._pool.close()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def migrate(self) -> list[str]:
        """Applies the migrations not applied yet, in name order, each in its own transaction; returns them."""
        applied_now = []
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row["name"] for row in await conn.fetch("SELECT name FROM schema_migrations")}
            scripts = sorted(
                (f for f in resources.files("recommender.storage.migrations").iterdir() if f.name.endswith(".sql")),
                key=lambda f: f.name,
            )
            for script in scripts:
                if script.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(script.read_text(encoding="utf-8"))
                    await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", script.name)
                applied_now.append(script.name)
        for name in applied_now:
            log.info("applied migration %s", name)
        return applied_now

    async def seed_if_empty(self, books: Sequence[Book], interactions: Sequence[Interaction]) -> bool:
        """Writes the demo catalogue into an empty database; False when there were books already."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM books)"):
                return False
            await _upsert_books(conn, books)
            await _insert_interactions(conn, interactions)
        return True

    async def import_data(self, books: Sequence[Book], interactions: Sequence[Interaction]) -> None:
        """Upserts books and appends interactions in one transaction: all of it lands, or none.

        Raises ValueError naming the first interactions whose book is neither in the database nor in `books`.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            await _upsert_books(conn, books)
            missing = await conn.fetch(
                "SELECT DISTINCT b FROM unnest($1::integer[]) AS b WHERE NOT EXISTS "
                "(SELECT 1 FROM books WHERE book_id = b) ORDER BY b LIMIT 10",
                sorted({i.book_id for i in interactions}),
            )
            if missing:
                ids = ", ".join(str(row["b"]) for row in missing)
                raise ValueError(f"interactions refer to books that do not exist: {ids}")
            await _insert_interactions(conn, interactions)

    async def add_interactions(self, interactions: Sequence[Interaction]) -> None:
        await self.import_data([], interactions)

    async def load_training_data(self) -> TrainingData:
        """One consistent snapshot of books and interactions (a single REPEATABLE READ transaction)."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            book_rows = await conn.fetch(
                "SELECT book_id, title, authors, description, genres, published_year FROM books ORDER BY book_id"
            )
            # Three arrays in one row decode far faster than a million records.
            columns = await conn.fetchrow(
                "SELECT coalesce(array_agg(user_id), '{}') AS users, coalesce(array_agg(book_id), '{}') AS books, "
                "coalesce(array_agg(weight), '{}') AS weights FROM interactions"
            )
        books = [
            Book(
                book_id=row["book_id"],
                title=row["title"],
                authors=row["authors"],
                description=row["description"],
                genres=tuple(row["genres"]),
                published_year=row["published_year"],
            )
            for row in book_rows
        ]
        assert columns is not None
        return TrainingData(
            books=books,
            user_ids=np.asarray(columns["users"], dtype=np.int32),
            book_ids=np.asarray(columns["books"], dtype=np.int32),
            weights=np.asarray(columns["weights"], dtype=np.float32),
        )

    async def existing_book_ids(self, book_ids: Iterable[int]) -> set[int]:
        rows = await self._pool.fetch(
            "SELECT book_id FROM books WHERE book_id = ANY($1::integer[])", sorted(set(book_ids))
        )
        return {row["book_id"] for row in rows}

    async def user_history(self, user_id: int) -> list[tuple[int, float]]:
        """(book_id, summed weight) of everything the user interacted with."""
        rows = await self._pool.fetch(
            "SELECT book_id, sum(weight)::real AS weight FROM interactions WHERE user_id = $1 GROUP BY book_id",
            user_id,
        )
        return [(row["book_id"], row["weight"]) for row in rows]

    async def counts(self) -> dict[str, int]:
        row = await self._pool.fetchrow(
            "SELECT (SELECT count(*) FROM books) AS books, (SELECT count(*) FROM users) AS users, "
            "(SELECT count(*) FROM interactions) AS interactions"
        )
        assert row is not None
        return dict(row)


async def _upsert_books(conn: asyncpg.Connection, books: Iterable[Book]) -> None:
    records = [(b.book_id, b.title, b.authors, b.description, list(b.genres), b.published_year) for b in books]
    if not records:
        return
    await conn.execute("CREATE TEMPORARY TABLE incoming_books (LIKE books INCLUDING DEFAULTS) ON COMMIT DROP")
    await conn.copy_records_to_table(
        "incoming_books",
        records=records,
        columns=["book_id", "title", "authors", "description", "genres", "published_year"],
    )
    await conn.execute(
        "INSERT INTO books (book_id, title, authors, description, genres, published_year) "
        "SELECT book_id, title, authors, description, genres, published_year FROM incoming_books "
        "ON CONFLICT (book_id) DO UPDATE SET title = excluded.title, authors = excluded.authors, "
        "description = excluded.description, genres = excluded.genres, "
        "published_year = excluded.published_year, updated_at = now()"
    )


async def _insert_interactions(conn: asyncpg.Connection, interactions: Sequence[Interaction]) -> None:
    if not interactions:
        return
    await conn.execute(
        "INSERT INTO users (user_id) SELECT DISTINCT unnest($1::integer[]) ON CONFLICT DO NOTHING",
        sorted({i.user_id for i in interactions}),
    )
    now = datetime.now(UTC)
    await conn.copy_records_to_table(
        "interactions",
        records=[
            (
                i.user_id,
                i.book_id,
                i.rating,
                i.weight,
                datetime.fromtimestamp(i.timestamp, UTC) if i.timestamp is not None else now,
            )
            for i in interactions
        ],
        columns=["user_id", "book_id", "rating", "weight", "occurred_at"],
    )
