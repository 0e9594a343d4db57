"""The online record's raw tables by day (impressions by when they were shown, feedback by when it was recorded):
a partition per day made ahead, so that retention drops whole days instead of deleting rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

PARTITIONS_AHEAD = 2  # days with a partition of their own beyond today
PARTITIONED = {"impressions": "shown_at", "feedback": "recorded_at"}


async def coming_days(conn: asyncpg.Connection) -> None:
    """The partitions of today and of the PARTITIONS_AHEAD days after it, made when missing."""
    today = day_of(datetime.now(UTC))
    for table in PARTITIONED:
        for ahead in range(PARTITIONS_AHEAD + 1):
            await ensure_partition(conn, table, today + timedelta(days=ahead))


async def drop_days(conn: asyncpg.Connection, table: str, before: datetime) -> int:
    """Drops `table`'s day partitions that end at or before `before`; returns the rows they held."""
    gone = 0
    for name in await day_partitions(conn, table):
        if partition_day(name) + timedelta(days=1) <= before:
            gone += await conn.fetchval(f"SELECT count(*) FROM {name}")
            await conn.execute(f"DROP TABLE {name}")
    return gone


async def day_partitions(conn: asyncpg.Connection, table: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = $1::regclass AND c.relname ~ $2",
        table,
        f"^{table}_p[0-9]{{8}}$",
    )
    return sorted(row["relname"] for row in rows)


async def ensure_partition(conn: asyncpg.Connection, table: str, day: datetime) -> None:
    """`table`'s partition for `day` (UTC); rows of that day that landed in the default partition move into it.

    Writes to `table` wait while it is made (and so does another process making it): ATTACH takes only a weak lock
    on the parent, so a write that began before it would route a row of that day to the default partition and then
    fail the default partition's new constraint; and a row landing in the default partition between the move and
    the ATTACH would fail the ATTACH."""
    name = f"{table}_p{day:%Y%m%d}"
    if await conn.fetchval("SELECT to_regclass($1)", name) is not None:
        return
    column, end = PARTITIONED[table], day + timedelta(days=1)
    bounds = f"FROM ('{day.isoformat()}') TO ('{end.isoformat()}')"
    async with conn.transaction():
        await conn.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")
        if await conn.fetchval("SELECT to_regclass($1)", name) is not None:
            return
        await conn.execute(f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        await conn.execute(
            f"WITH moved AS (DELETE FROM {table}_default WHERE {column} >= $1 AND {column} < $2 RETURNING *) "
            f"INSERT INTO {name} SELECT * FROM moved",
            day,
            end,
        )
        await conn.execute(f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES {bounds}")


def day_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def partition_day(name: str) -> datetime:
    return datetime.strptime(name.rsplit("_p", 1)[1], "%Y%m%d").replace(tzinfo=UTC)
