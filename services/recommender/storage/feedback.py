"""The online record in PostgreSQL: the answers readers were shown (impressions), what they did with them
(feedback), and the sums of model/online.py computed from both.

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

from recommender.model.online_metrics import OnlineSums, Summed
from recommender.storage.db import Database


@dataclass(frozen=True)
class Impression:
    recommendation_id: uuid.UUID
    user_id: int
    version: str
    books: list[int]  # best first
    shown_at: datetime


@dataclass(frozen=True)
class Feedback:
    recommendation_id: uuid.UUID
    book_id: int
    event: str  # "click", "read" or "dismiss" (model/validation.py)
    occurred_at: datetime
    user_id: int | None = None  # the reader, when the event names one (a read recorded with an interaction)


# How much earlier than its answer an event may say it happened (clients' clocks are not the server's).
CLOCK_SKEW = timedelta(minutes=1)


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


# Per impression of the period: whether a shown book was clicked, how many were read, the reciprocal rank of the
# first hit; then per reader (the unit of analysis, model/online.py), then by version (and bucket). $1: since,
# $2: versions (NULL: all), $3: attribution window, $4: bucket width (NULL: one bucket), $5: where buckets start
# (EPOCH, so that they stay put), $6: CLOCK_SKEW.
_SUMS = """
WITH shown AS (
    SELECT recommendation_id, user_id, version, books, shown_at,
           CASE WHEN $4::interval IS NULL THEN $1 ELSE date_bin($4::interval, shown_at, $5) END AS bucket
    FROM impressions
    WHERE shown_at >= $1 AND ($2::text[] IS NULL OR version = ANY ($2::text[]))
), by_id AS (
    SELECT s.recommendation_id, f.book_id, f.event = 'click' AS click
    FROM shown s JOIN feedback f ON f.recommendation_id = s.recommendation_id
    WHERE f.event IN ('click', 'read') AND f.book_id = ANY (s.books)
      AND (f.user_id IS NULL OR f.user_id = s.user_id)
      AND f.occurred_at >= s.shown_at - $6::interval AND f.occurred_at < s.shown_at + $3::interval
), by_window AS (
    SELECT DISTINCT ON (x.user_id, x.book_id) s.recommendation_id, x.book_id, false AS click
    FROM shown s
    JOIN interactions x ON x.user_id = s.user_id AND x.book_id = ANY (s.books)
        AND x.occurred_at >= s.shown_at AND x.occurred_at < s.shown_at + $3::interval
    ORDER BY x.user_id, x.book_id, s.shown_at DESC
), hits AS (
    SELECT * FROM by_id UNION ALL SELECT * FROM by_window
), per_impression AS (
    SELECT s.version, s.bucket, s.user_id, min(s.shown_at) AS shown_at,
           coalesce(bool_or(h.click), false)::int AS clicked,
           count(DISTINCT h.book_id) FILTER (WHERE NOT h.click) AS reads,
           coalesce(1.0 / min(array_position(s.books, h.book_id)), 0)::float8 AS rr
    FROM shown s LEFT JOIN hits h ON h.recommendation_id = s.recommendation_id
    GROUP BY s.recommendation_id, s.version, s.bucket, s.user_id
), per_user AS (
    SELECT version, bucket, count(*)::float8 AS i, sum(clicked)::float8 AS c, sum(reads)::float8 AS r,
           sum(rr) AS rr, min(shown_at) AS shown_at
    FROM per_impression GROUP BY version, bucket, user_id
)
SELECT version, bucket, sum(i)::bigint AS impressions, count(*) AS users, sum(i * i) AS i2,
       sum(c) AS c, sum(c * c) AS c2, sum(c * i) AS ci,
       sum(r) AS r, sum(r * r) AS r2, sum(r * i) AS ri,
       sum(rr) AS rr, sum(rr * rr) AS rr2, sum(rr * i) AS rri, min(shown_at) AS since
FROM per_user GROUP BY version, bucket ORDER BY version, bucket
"""

EPOCH = datetime.fromisoformat("2000-01-01T00:00:00+00:00")


class OnlineStore:
    def __init__(self, db: Database, attribution_window: timedelta) -> None:
        self._db = db
        self.attribution_window = attribution_window

    async def add_impressions(self, impressions: Sequence[Impression]) -> None:
        if not impressions:
            return
        records = [(i.recommendation_id, i.user_id, i.version, i.books, i.shown_at) for i in impressions]

        async def write(conn: asyncpg.Connection) -> None:
            await conn.copy_records_to_table(
                "impressions",
                records=records,
                columns=["recommendation_id", "user_id", "version", "books", "shown_at"],
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

    async def shown(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Impression]:
        """The stored answers of `ids` (those not written yet, or pruned, are missing)."""
        rows = await self._db.fetch(
            "SELECT recommendation_id, user_id, version, books, shown_at FROM impressions "
            "WHERE recommendation_id = ANY($1::uuid[])",
            sorted(set(ids)),
        )
        return {
            row["recommendation_id"]: Impression(
                row["recommendation_id"], row["user_id"], row["version"], list(row["books"]), row["shown_at"]
            )
            for row in rows
        }

    async def sums(self, since: datetime | None = None, versions: Sequence[str] | None = None) -> dict[str, OnlineSums]:
        """Each version's sums over its impressions since `since` (all that are kept when None)."""
        rows = await self._db.fetch(
            _SUMS,
            since or EPOCH,
            list(versions) if versions else None,
            self.attribution_window,
            None,
            EPOCH,
            CLOCK_SKEW,
        )
        return {row["version"]: _sums(row) for row in rows}

    async def series(self, since: datetime, bucket: timedelta) -> dict[str, list[tuple[datetime, OnlineSums]]]:
        """Each version's sums per bucket of `bucket` width from `since`, the buckets without impressions left out."""
        rows = await self._db.fetch(_SUMS, since, None, self.attribution_window, bucket, EPOCH, CLOCK_SKEW)
        series: dict[str, list[tuple[datetime, OnlineSums]]] = {}
        for row in rows:
            series.setdefault(row["version"], []).append((row["bucket"], _sums(row)))
        return series

    async def prune(self, before: datetime) -> tuple[int, int]:
        """Deletes impressions shown and feedback recorded before `before`; returns how many of each."""
        async with self._db.transaction() as conn:
            impressions = await conn.execute("DELETE FROM impressions WHERE shown_at < $1", before)
            feedback = await conn.execute("DELETE FROM feedback WHERE recorded_at < $1", before)
        return _count(impressions), _count(feedback)


def _sums(row: asyncpg.Record) -> OnlineSums:
    return OnlineSums(
        impressions=int(row["impressions"]),
        users=int(row["users"]),
        impression_squares=float(row["i2"]),
        clicks=Summed(float(row["c"]), float(row["c2"]), float(row["ci"])),
        reads=Summed(float(row["r"]), float(row["r2"]), float(row["ri"])),
        reciprocal_ranks=Summed(float(row["rr"]), float(row["rr2"]), float(row["rri"])),
        since=row["since"],
    )


def _count(status: str) -> int:
    """The row count of a command status such as "DELETE 12"."""
    return int(status.rsplit(" ", 1)[-1])
