"""Erasure on request (GDPR article 17): a reader's or a book's rows removed from every table in one transaction,
and the other processes told at its commit.

A reader: their interactions, impressions, feedback (attributed to them, or about their impressions), their rows
of the online roll-ups, and the user row. A book: its interactions (the readers who had it are told, so their
answers change at once), the feedback about it, and the book row; impressions that showed it keep its id among
the books they showed (what an answer was), nothing else. Either leaves its bare id in `erased_users` /
`erased_books`, which every serving process reads with the changes since its model's snapshot: the reader is
answered as a stranger, the book is never shown and its readers' histories lose it, by models trained before the
erasure too. A reader with nothing stored is recorded all the same (an answer on its way to the database is
removed when it lands), and answered NothingStored.

An erasure locks its user or book row first, and the writes of interactions lock the rows they name
(storage/catalogue.py), so the two are serialised: a write lands before the erasure (and is erased with it) or
after it (a new reader; a book erased meanwhile is unknown).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from recommender.storage.db import Database
from recommender.storage.events import Event, Kind, notify
from recommender.storage.feedback import IMPRESSIONS_LOCK
from recommender.storage.rollups import ONLINE_LOCK


class NothingStored(Exception):
    """Nothing of the reader, or no such book, is stored: nothing was written."""


@dataclass(frozen=True)
class Erased:
    """Rows removed, per table."""

    rows: dict[str, int]

    @property
    def stored(self) -> bool:
        """Whether anything was stored."""
        return any(self.rows.values())


class Erasure:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def user(self, user_id: int) -> Erased:
        async def write(conn: asyncpg.Connection) -> Erased:
            # The user's row, made when missing, locked: a write of theirs begun before waits for the erasure.
            made = await conn.fetchval(
                "INSERT INTO users (user_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true", user_id
            )
            await conn.execute("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE", user_id)
            await conn.execute("SELECT pg_advisory_xact_lock($1)", IMPRESSIONS_LOCK)  # batches in flight wait
            await conn.execute("SELECT pg_advisory_xact_lock($1)", ONLINE_LOCK)  # no roll-up re-adds their sums
            rows = {
                "feedback": await _deleted(
                    conn,
                    "DELETE FROM feedback WHERE user_id = $1 OR recommendation_id IN "
                    "(SELECT recommendation_id FROM impressions WHERE user_id = $1)",
                    user_id,
                ),
                "impressions": await _deleted(conn, "DELETE FROM impressions WHERE user_id = $1", user_id),
                "online_rollups": await _deleted(conn, "DELETE FROM online_rollups WHERE user_id = $1", user_id),
                "online_readers": await _deleted(conn, "DELETE FROM online_readers WHERE user_id = $1", user_id),
                "interactions": await _deleted(conn, "DELETE FROM interactions WHERE user_id = $1", user_id),
                "users": await _deleted(conn, "DELETE FROM users WHERE user_id = $1", user_id) - bool(made),
            }
            await _remember(conn, "user", user_id)
            await notify(conn, Event.about(Kind.INTERACTIONS, [user_id]))
            return Erased(rows)

        erased = await self._db.written(write)
        if not erased.stored:
            raise NothingStored(f"user {user_id} has nothing stored")
        return erased

    async def book(self, book_id: int) -> Erased:
        async def write(conn: asyncpg.Connection) -> Erased:
            if not await conn.fetchval("SELECT true FROM books WHERE book_id = $1 FOR UPDATE", book_id):
                raise NothingStored(f"book {book_id} is not in the catalogue")  # (writes of it wait while it runs)
            readers = [
                row["user_id"]
                for row in await conn.fetch("SELECT DISTINCT user_id FROM interactions WHERE book_id = $1", book_id)
            ]
            rows = {
                "feedback": await _deleted(conn, "DELETE FROM feedback WHERE book_id = $1", book_id),
                "interactions": await _deleted(conn, "DELETE FROM interactions WHERE book_id = $1", book_id),
                "books": await _deleted(conn, "DELETE FROM books WHERE book_id = $1", book_id),
            }
            await _remember(conn, "book", book_id)
            # In this order: every process hides the book before its readers' histories lose it.
            await notify(conn, Event.about(Kind.ERASED_BOOKS, [book_id]))
            await notify(conn, Event.about(Kind.BOOKS, [book_id]))
            if readers:
                await notify(conn, Event.about(Kind.INTERACTIONS, readers))
            return Erased(rows)

        return await self._db.written(write)


async def _remember(conn: asyncpg.Connection, kind: str, key: int) -> None:
    """The bare id of what was erased, as of now (the answers shown before are the erased reader's)."""
    await conn.execute(
        f"INSERT INTO erased_{kind}s ({kind}_id, erased_at) VALUES ($1, clock_timestamp()) ON CONFLICT ({kind}_id) "
        "DO UPDATE SET erased_at = excluded.erased_at, changed_xid = pg_current_xact_id()::text::bigint",
        key,
    )


async def _deleted(conn: asyncpg.Connection, sql: str, key: int) -> int:
    status: str = await conn.execute(sql, key)
    return int(status.rsplit(" ", 1)[-1])
