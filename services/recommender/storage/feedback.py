"""The online record in PostgreSQL: the answers readers were shown (impressions), what they did with them
(feedback), written and read back; the sums of answers/statistics.py computed from both are the roll-ups'
(storage/rollups.py), and the raw tables are partitioned by day (storage/partitions.py).

Attribution: a click or read that names its answer (`recommendation_id`) counts for that answer when the answer
showed that book, to that reader (when the event names one: a read recorded with an interaction), and the event
happened within the attribution window after the answer (CLOCK_SKEW before it allowed); a read without an id (an
interaction) counts for the latest answer that showed the reader that book before it, within the window. Each book
counts once per answer. The same rules are checked when an event arrives (`attribution_problem`, refused with the
reason) and again by the sums' SQL, for events whose answer was not written yet when they arrived.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from recommender.storage.rollups import CLOCK_SKEW, RollUps


@dataclass(frozen=True)
class Impression:
    recommendation_id: uuid.UUID
    user_id: int
    version: str
    books: list[int]  # best first
    shown_at: datetime
    continues: uuid.UUID | None = None  # a later page: the answer it continues


@dataclass(frozen=True)
class Feedback:
    recommendation_id: uuid.UUID
    book_id: int
    event: str  # "click", "read" or "dismiss" (model/validation.py)
    occurred_at: datetime
    user_id: int | None = None  # the reader, when the event names one (a read recorded with an interaction)


def attribution_problem(feedback: Feedback, shown: Impression, window: timedelta) -> str:
    """Why `feedback` cannot count for the answer it names (`shown`); "" when it can."""
    if feedback.user_id is not None and feedback.user_id != shown.user_id:
        return f"recommendation {shown.recommendation_id} was shown to another reader"
    if feedback.book_id not in shown.books:
        return f"book {feedback.book_id} was not in recommendation {shown.recommendation_id}"
    if not shown.shown_at - CLOCK_SKEW <= feedback.occurred_at < shown.shown_at + window:
        return (
            f"the event's time {feedback.occurred_at.isoformat(timespec='seconds')} is not within the attribution "
            f"window ({window}) after recommendation {shown.recommendation_id} was shown "
            f"({shown.shown_at.isoformat(timespec='seconds')})"
        )
    return ""


# "impr": batches of impressions take it shared, a reader's erasure exclusive, so that a batch written during an
# erasure sees it (and drops the reader's answers shown before it).
IMPRESSIONS_LOCK = 0x696D7072


class OnlineStore(RollUps):
    """Impressions and feedback on `db`, with their roll-ups (RollUps: sums, series, retention)."""

    async def add_impressions(self, impressions: Sequence[Impression]) -> None:
        if not impressions:
            return
        records = [(i.recommendation_id, i.user_id, i.version, i.books, i.shown_at, i.continues) for i in impressions]

        users = sorted({i.user_id for i in impressions})

        async def write(conn: asyncpg.Connection) -> None:
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", IMPRESSIONS_LOCK)
            await conn.copy_records_to_table(
                "impressions",
                records=records,
                columns=["recommendation_id", "user_id", "version", "books", "shown_at", "continues"],
            )
            # An answer shown before its reader was erased, and written after (a batch in flight): erased too.
            await conn.execute(
                "DELETE FROM impressions i USING erased_users e WHERE i.user_id = e.user_id "
                "AND i.shown_at <= e.erased_at AND e.user_id = ANY($1::integer[])",
                users,
            )

        await self._db.written(write)

    async def add_feedback(self, feedback: Sequence[Feedback]) -> None:
        """Records the events in one transaction."""
        await self._db.written(self.feedback_writer(feedback))

    @staticmethod
    def feedback_writer(feedback: Sequence[Feedback]) -> Callable[[asyncpg.Connection], Awaitable[None]]:
        """The write of `feedback`, for a transaction of another store (reads recorded with an interaction)."""
        records = [(f.recommendation_id, f.book_id, f.event, f.occurred_at, f.user_id) for f in feedback]

        async def write(conn: asyncpg.Connection) -> None:
            if records:
                await conn.copy_records_to_table(
                    "feedback",
                    records=records,
                    columns=["recommendation_id", "book_id", "event", "occurred_at", "user_id"],
                )

        return write

    async def pages_of(self, answer: uuid.UUID) -> list[Impression]:
        """The later pages written of an answer."""
        rows = await self._db.fetch(
            "SELECT recommendation_id, user_id, version, books, shown_at, continues FROM impressions "
            "WHERE continues = $1",
            answer,
        )
        return [_impression(row) for row in rows]

    async def shown(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Impression]:
        """The stored answers of `ids` (those not written yet, or pruned, are missing)."""
        rows = await self._db.fetch(
            "SELECT recommendation_id, user_id, version, books, shown_at, continues FROM impressions "
            "WHERE recommendation_id = ANY($1::uuid[])",
            sorted(set(ids)),
        )
        return {row["recommendation_id"]: _impression(row) for row in rows}


def _impression(row: asyncpg.Record) -> Impression:
    return Impression(
        row["recommendation_id"], row["user_id"], row["version"], list(row["books"]), row["shown_at"],
        row["continues"],
    )  # fmt: skip
