"""The online record's roll-ups in PostgreSQL: each impression keeps its own figures, and their sums per version,
10-minute bucket and reader are what the online figures read, so they cost the same at ten million impressions as
at ten thousand. The attribution rules of storage/feedback.py, applied by SQL to every event, including those
whose answer was not written yet when they arrived; retention takes old days out of the sums too."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg

from recommender.storage.db import Database
from recommender.storage.partitions import coming_days, day_of, drop_days
from recommender.storage.snapshot import UNSEEN
from recommender.storage.sums import OnlineSums, Summed

# How much earlier than its answer an event may say it happened (clients' clocks are not the server's).
CLOCK_SKEW = timedelta(minutes=1)
EPOCH = datetime.fromisoformat("2000-01-01T00:00:00+00:00")
FOREVER = datetime.max.replace(tzinfo=UTC)
BUCKET = timedelta(minutes=10)  # of the roll-ups
ONLINE_LOCK = 0x6F6E6C6E  # "onln": one roll-up or prune at a time
ROLL_UP_BATCH = 50_000  # new impressions, and new feedback events, per transaction of a roll-up

# Adds `deltas` (version, bucket, user_id, i, c, r, rr: changes of a reader's figures in a bucket; shown_at: the
# earliest impression among them), a CTE of the statement it ends (the statement's last SELECT follows), to the
# roll-ups: per version, bucket and reader; per version and reader; and per
# version and bucket, whose sums of squares and products over readers move by (old + delta)^2 - old^2.
_APPLY = """
), olds AS (
    SELECT d.*, coalesce(o.impressions, 0)::float8 AS oi, coalesce(o.clicks, 0)::float8 AS oc,
           coalesce(o.reads, 0)::float8 AS orr, coalesce(o.reciprocal_ranks, 0) AS ork
    FROM deltas d LEFT JOIN online_rollups o USING (version, bucket, user_id)
), by_bucket_and_reader AS (
    INSERT INTO online_rollups AS o
        (version, bucket, user_id, impressions, clicks, reads, reciprocal_ranks, first_shown)
    SELECT version, bucket, user_id, i, c, r, rr, shown_at FROM deltas
    ON CONFLICT (version, bucket, user_id) DO UPDATE SET
        impressions = o.impressions + excluded.impressions,
        clicks = o.clicks + excluded.clicks,
        reads = o.reads + excluded.reads,
        reciprocal_ranks = o.reciprocal_ranks + excluded.reciprocal_ranks,
        first_shown = least(o.first_shown, excluded.first_shown)
), by_reader AS (
    INSERT INTO online_readers AS o (version, user_id, impressions, clicks, reads, reciprocal_ranks)
    SELECT version, user_id, sum(i), sum(c), sum(r), sum(rr) FROM deltas GROUP BY version, user_id
    ON CONFLICT (version, user_id) DO UPDATE SET
        impressions = o.impressions + excluded.impressions,
        clicks = o.clicks + excluded.clicks,
        reads = o.reads + excluded.reads,
        reciprocal_ranks = o.reciprocal_ranks + excluded.reciprocal_ranks
), by_bucket AS (
    INSERT INTO online_buckets AS b
        (version, bucket, impressions, users, i2, c, c2, ci, r, r2, ri, rr, rr2, rri, first_shown)
SELECT version, bucket, sum(i), sum((oi + i > 0)::int - (oi > 0)::int), sum((oi + i) ^ 2 - oi ^ 2),
       sum(c), sum((oc + c) ^ 2 - oc ^ 2), sum((oc + c) * (oi + i) - oc * oi),
       sum(r), sum((orr + r) ^ 2 - orr ^ 2), sum((orr + r) * (oi + i) - orr * oi),
       sum(rr), sum((ork + rr) ^ 2 - ork ^ 2), sum((ork + rr) * (oi + i) - ork * oi), min(shown_at)
FROM olds GROUP BY version, bucket
ON CONFLICT (version, bucket) DO UPDATE SET
    impressions = b.impressions + excluded.impressions, users = b.users + excluded.users, i2 = b.i2 + excluded.i2,
    c = b.c + excluded.c, c2 = b.c2 + excluded.c2, ci = b.ci + excluded.ci,
    r = b.r + excluded.r, r2 = b.r2 + excluded.r2, ri = b.ri + excluded.ri,
    rr = b.rr + excluded.rr, rr2 = b.rr2 + excluded.rr2, rri = b.rri + excluded.rri,
    first_shown = least(b.first_shown, excluded.first_shown)
)
"""

# The roll-up (OnlineStore.roll_up) recomputes the figures of the impressions something may have changed, with the
# rules above, and adds what changed to online_rollups. $1: the impressions (ids), $2: the attribution window,
# $3: CLOCK_SKEW, $4: EPOCH (where the 10-minute buckets start).
_ROLL_UP = (
    """
WITH shown AS (
    SELECT recommendation_id, user_id, version, books, shown_at, counted, clicked, reads, reciprocal_rank
    FROM impressions WHERE recommendation_id = ANY ($1::uuid[])
), by_id AS (
    SELECT s.recommendation_id, f.book_id, f.event = 'click' AS click
    FROM shown s JOIN feedback f ON f.recommendation_id = s.recommendation_id
    WHERE f.event IN ('click', 'read') AND f.book_id = ANY (s.books)
      AND (f.user_id IS NULL OR f.user_id = s.user_id)
      AND f.occurred_at >= s.shown_at - $3::interval AND f.occurred_at < s.shown_at + $2::interval
), by_window AS (
    SELECT w.recommendation_id, w.book_id, false AS click
    FROM (
        SELECT DISTINCT ON (x.user_id, x.book_id) i.recommendation_id, x.book_id
        FROM (SELECT DISTINCT user_id, unnest(books) AS book_id FROM shown) p
        JOIN interactions x ON x.user_id = p.user_id AND x.book_id = p.book_id
        JOIN impressions i ON i.user_id = x.user_id AND x.book_id = ANY (i.books)
            AND i.shown_at <= x.occurred_at AND i.shown_at > x.occurred_at - $2::interval
        ORDER BY x.user_id, x.book_id, i.shown_at DESC
    ) w
    JOIN shown s ON s.recommendation_id = w.recommendation_id
), hits AS (
    SELECT * FROM by_id UNION ALL SELECT * FROM by_window
), figures AS (
    SELECT s.recommendation_id, s.shown_at,
           coalesce(bool_or(h.click), false) AS clicked,
           (count(DISTINCT h.book_id) FILTER (WHERE NOT h.click))::int AS reads,
           coalesce(1.0 / min(array_position(s.books, h.book_id)), 0)::float8 AS reciprocal_rank
    FROM shown s LEFT JOIN hits h ON h.recommendation_id = s.recommendation_id
    GROUP BY s.recommendation_id, s.shown_at
), changed AS (
    SELECT s.recommendation_id, s.version, date_bin('10 minutes', s.shown_at, $4) AS bucket, s.user_id, s.shown_at,
           (NOT s.counted)::int AS impressions,
           f.clicked::int - (s.counted AND s.clicked)::int AS clicks,
           f.reads - CASE WHEN s.counted THEN s.reads ELSE 0 END AS reads,
           f.reciprocal_rank - CASE WHEN s.counted THEN s.reciprocal_rank ELSE 0 END AS reciprocal_ranks
    FROM shown s JOIN figures f USING (recommendation_id)
    WHERE NOT s.counted
       OR (s.clicked, s.reads, s.reciprocal_rank) IS DISTINCT FROM (f.clicked, f.reads, f.reciprocal_rank)
), updated AS (
    UPDATE impressions i
    SET counted = true, clicked = f.clicked, reads = f.reads, reciprocal_rank = f.reciprocal_rank
    FROM figures f JOIN changed c USING (recommendation_id)
    WHERE i.recommendation_id = f.recommendation_id AND i.shown_at = f.shown_at
), deltas AS (
    SELECT version, bucket, user_id, sum(impressions) AS i, sum(clicks) AS c, sum(reads) AS r,
           sum(reciprocal_ranks) AS rr, min(shown_at) AS shown_at
    FROM changed GROUP BY version, bucket, user_id
"""
    + _APPLY
    + "SELECT count(*) FROM deltas"
)

# The impressions whose figures may have changed since the last roll-up: new ones ($2, ids); those new feedback
# names ($3, ids); those that showed a book an interaction changed since the snapshot $4 (NULL: none) read within
# the window ($1) before it; and the older answers of readers with new ones, which a read may move to the newer one.
_TOUCHED = f"""
SELECT unnest($2::uuid[]) AS recommendation_id
UNION
SELECT unnest($3::uuid[])
UNION
SELECT i.recommendation_id
FROM interactions x
JOIN impressions i ON i.user_id = x.user_id AND x.book_id = ANY (i.books)
    AND i.shown_at <= x.occurred_at AND i.shown_at > x.occurred_at - $1::interval
WHERE $4::text IS NOT NULL AND {UNSEEN.replace("$1", "$4")}
UNION
SELECT older.recommendation_id
FROM impressions new
JOIN impressions older ON older.user_id = new.user_id AND older.reads > 0
    AND older.shown_at < new.shown_at AND older.shown_at > new.shown_at - $1::interval
WHERE new.recommendation_id = ANY ($2::uuid[])
"""

# Each version's figures per reader, from the roll-ups' whole buckets from $1 (before $6) and the impressions from $2
# up to $1 (a period's first, partial bucket), then summed by version and bucket ($4 wide, from $5; NULL: one
# bucket), the reader being the unit of analysis (answers/statistics.py). $3: the versions (NULL: all).
_SUMS = """
WITH figures AS (
    SELECT version, bucket AS at, user_id, impressions AS i, clicks AS c, reads AS r, reciprocal_ranks AS rr,
           first_shown
    FROM online_rollups
    WHERE bucket >= $1 AND bucket < $6 AND ($3::text[] IS NULL OR version = ANY ($3::text[]))
    UNION ALL
    SELECT version, shown_at, user_id, 1, clicked::int, reads, reciprocal_rank, shown_at
    FROM impressions
    WHERE counted AND shown_at >= $2 AND shown_at < $1 AND ($3::text[] IS NULL OR version = ANY ($3::text[]))
), per_user AS (
    SELECT version, CASE WHEN $4::interval IS NULL THEN $2 ELSE date_bin($4::interval, at, $5) END AS bucket,
           sum(i)::float8 AS i, sum(c)::float8 AS c, sum(r)::float8 AS r, sum(rr)::float8 AS rr,
           min(first_shown) AS shown_at
    FROM figures GROUP BY 1, 2, user_id
)
SELECT version, bucket, sum(i)::bigint AS impressions, count(*) AS users, sum(i * i) AS i2,
       sum(c) AS c, sum(c * c) AS c2, sum(c * i) AS ci,
       sum(r) AS r, sum(r * r) AS r2, sum(r * i) AS ri,
       sum(rr) AS rr, sum(rr * rr) AS rr2, sum(rr * i) AS rri, min(shown_at) AS since
FROM per_user WHERE i > 0 GROUP BY version, bucket ORDER BY version, bucket
"""

# Each version's 10-minute buckets from $1, one row each.
_BUCKETS = """
SELECT version, bucket, impressions, users, i2, c, c2, ci, r, r2, ri, rr, rr2, rri, first_shown AS since
FROM online_buckets WHERE bucket >= $1 AND impressions > 0
"""

# Everything kept, per version: the per-reader totals (online_readers), the time of the first impression from the
# earliest bucket. What ListModels and ModelInfo show: its cost follows the readers, not the impressions.
_SUMS_KEPT = """
WITH per_user AS (
    SELECT version, impressions::float8 AS i, clicks::float8 AS c, reads::float8 AS r, reciprocal_ranks AS rr
    FROM online_readers WHERE impressions > 0
)
SELECT version, NULL AS bucket, sum(i)::bigint AS impressions, count(*) AS users, sum(i * i) AS i2,
       sum(c) AS c, sum(c * c) AS c2, sum(c * i) AS ci,
       sum(r) AS r, sum(r * r) AS r2, sum(r * i) AS ri,
       sum(rr) AS rr, sum(rr * rr) AS rr2, sum(rr * i) AS rri,
       (SELECT min(first_shown) FROM online_rollups o WHERE o.version = per_user.version
        AND o.bucket = (SELECT min(bucket) FROM online_rollups b WHERE b.version = per_user.version)) AS since
FROM per_user WHERE $1::text[] IS NULL OR version = ANY ($1::text[]) GROUP BY version ORDER BY version
"""

# What a prune takes out of the roll-ups: whole days' buckets before $1 (their partitions dropped), then the
# figures of the impressions it deletes before $2 from the buckets that stay. $3: EPOCH.
_PRUNE_ROLL_UPS = """
WITH gone AS (
    DELETE FROM online_rollups WHERE bucket < $1
    RETURNING version, user_id, impressions, clicks, reads, reciprocal_ranks
), summed AS (
    SELECT version, user_id, sum(impressions) AS impressions, sum(clicks) AS clicks, sum(reads) AS reads,
           sum(reciprocal_ranks) AS reciprocal_ranks
    FROM gone GROUP BY 1, 2
)
UPDATE online_readers r
SET impressions = r.impressions - s.impressions, clicks = r.clicks - s.clicks, reads = r.reads - s.reads,
    reciprocal_ranks = r.reciprocal_ranks - s.reciprocal_ranks
FROM summed s WHERE r.version = s.version AND r.user_id = s.user_id
"""

_PRUNE_IMPRESSIONS = (
    """
WITH gone AS (
    DELETE FROM impressions WHERE shown_at < $2
    RETURNING version, shown_at, user_id, counted, clicked, reads, reciprocal_rank
), counted AS (
    SELECT count(*) AS gone FROM gone
), deltas AS (
    SELECT version, date_bin('10 minutes', shown_at, $3) AS bucket, user_id, -count(*) AS i,
           -sum(clicked::int) AS c, -sum(reads) AS r, -sum(reciprocal_rank) AS rr,
           'infinity'::timestamptz AS shown_at
    FROM gone WHERE counted AND shown_at >= $1 GROUP BY 1, 2, 3
"""
    + _APPLY
    + "SELECT gone FROM counted"
)


class RollUps:
    """The roll-ups of the online record on `db`, and its retention."""

    def __init__(self, db: Database, attribution_window: timedelta) -> None:
        self._db = db
        self.attribution_window = attribution_window

    async def roll_up(self) -> int:
        """Brings the roll-ups up to date with everything written before the call, ROLL_UP_BATCH new impressions
        or feedback events per transaction; returns how many impressions' figures it recomputed. Its cost follows
        what changed since the last roll-up, not the record's size."""
        recomputed, first = 0, True
        async with self._locked() as conn:
            while True:
                async with conn.transaction():
                    count, more = await self._roll_up_step(conn, first)
                recomputed, first = recomputed + count, False
                if not more:
                    return recomputed

    async def _roll_up_step(self, conn: asyncpg.Connection, interactions: bool) -> tuple[int, bool]:
        """One transaction of a roll-up (`interactions`: with the interactions changed since the last one);
        returns how many impressions it recomputed and whether more are waiting."""
        # Taken first: an interaction committed after it is looked at by the next roll-up.
        snapshot = await conn.fetchval("SELECT pg_current_snapshot()::text")
        last = await conn.fetchval("SELECT snapshot FROM online_rollup_state") if interactions else None
        new = await conn.fetch(
            "SELECT recommendation_id FROM impressions WHERE NOT counted ORDER BY shown_at LIMIT $1", ROLL_UP_BATCH
        )
        events = await conn.fetch(
            "SELECT feedback_id, recommendation_id FROM feedback WHERE NOT rolled_up ORDER BY recorded_at LIMIT $1",
            ROLL_UP_BATCH,
        )
        new_ids = [row["recommendation_id"] for row in new]
        named = [row["recommendation_id"] for row in events]
        touched = await conn.fetch(_TOUCHED, self.attribution_window, new_ids, named, last)
        if touched:
            ids = [row["recommendation_id"] for row in touched]
            await conn.execute(_ROLL_UP, ids, self.attribution_window, CLOCK_SKEW, EPOCH)
        if events:
            await conn.execute(
                "UPDATE feedback SET rolled_up = true WHERE feedback_id = ANY ($1::bigint[])",
                [row["feedback_id"] for row in events],
            )
        if interactions:
            await conn.execute("UPDATE online_rollup_state SET snapshot = $1", snapshot)
        return len(touched), ROLL_UP_BATCH in (len(new), len(events))

    async def sums(self, since: datetime | None = None, versions: Sequence[str] | None = None) -> dict[str, OnlineSums]:
        """Each version's sums over its impressions since `since` (all that are kept when None)."""
        await self.roll_up()
        chosen = list(versions) if versions else None
        if since is None:
            rows = await self._db.fetch(_SUMS_KEPT, chosen)
        else:
            rows = await self._db.fetch(_SUMS, _bucket_after(since), since, chosen, None, EPOCH, FOREVER)
        return {row["version"]: _sums(row) for row in rows}

    async def series(self, since: datetime, bucket: timedelta) -> dict[str, list[tuple[datetime, OnlineSums]]]:
        """Each version's sums per bucket of `bucket` width from `since`, the buckets without impressions left out.
        10-minute buckets read one row each (online_buckets); other multiples of 10 minutes the per-reader rows of
        their buckets; other widths the impressions' own figures."""
        await self.roll_up()
        whole = _bucket_after(since)
        if bucket == BUCKET:
            rows = await self._db.fetch(_SUMS, whole, since, None, bucket, EPOCH, whole)  # the first, partial bucket
            rows += await self._db.fetch(_BUCKETS, whole)
        else:
            whole = whole if bucket % BUCKET == timedelta(0) else FOREVER
            rows = await self._db.fetch(_SUMS, whole, since, None, bucket, EPOCH, FOREVER)
        series: dict[str, list[tuple[datetime, OnlineSums]]] = {}
        for row in sorted(rows, key=lambda row: (row["version"], row["bucket"])):
            series.setdefault(row["version"], []).append((row["bucket"], _sums(row)))
        return series

    async def prune(self, before: datetime) -> tuple[int, int]:
        """Deletes impressions shown and feedback recorded before `before` (whole days by dropping their
        partitions), takes the impressions' figures out of the roll-ups, and makes the partitions of the coming
        days; returns how many impressions and feedback events went."""
        async with self._locked() as conn:
            async with conn.transaction():
                impressions = await drop_days(conn, "impressions", before)
                await conn.execute(_PRUNE_ROLL_UPS, day_of(before))
                await conn.execute("DELETE FROM online_buckets WHERE bucket < $1", day_of(before))
                impressions += await conn.fetchval(_PRUNE_IMPRESSIONS, day_of(before), before, EPOCH)
                for rolled_up in ("online_rollups", "online_readers", "online_buckets"):
                    await conn.execute(f"DELETE FROM {rolled_up} WHERE impressions <= 0")
                feedback = await drop_days(conn, "feedback", before)
                feedback += _count(await conn.execute("DELETE FROM feedback WHERE recorded_at < $1", before))
            await coming_days(conn)
        return impressions, feedback

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection holding the online record's lock (a session lock: taken before any transaction's snapshot,
        so that a roll-up sees what the one before it wrote)."""
        async with self._db.connection() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", ONLINE_LOCK)
            try:
                yield conn
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", ONLINE_LOCK)


def _bucket_after(moment: datetime) -> datetime:
    """The start of the first whole roll-up bucket at or after `moment`."""
    into = (moment - EPOCH) % BUCKET
    return moment if into == timedelta(0) else moment - into + BUCKET


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
