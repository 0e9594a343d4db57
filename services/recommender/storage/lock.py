"""One retrain in the whole cluster at a time: PostgreSQL's advisory lock, held on a connection of its own."""

from __future__ import annotations

import asyncpg

from recommender.storage.db import CONNECT_ERRORS, Database, unavailable
from recommender.storage.events import Event, Kind, notify

RETRAIN_LOCK = 0x72657472  # "retr"


class RetrainLock:
    """One retrain in the whole cluster at a time: a session-level advisory lock, held on a connection of its own
    for as long as the retrain runs. PostgreSQL frees it when that connection ends, so a process that dies in the
    middle of a retrain frees it too."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None

    async def acquire(self, announce: bool = True) -> bool:
        """True when this process now holds the lock; False when another one does. `announce`: tell every process
        that a retrain runs (their Health says so). Raises DatabaseUnavailable."""
        try:
            conn = await asyncpg.connect(self._dsn, timeout=10)
        except CONNECT_ERRORS as exc:
            raise unavailable(self._dsn, exc) from exc
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RETRAIN_LOCK):
                await conn.close()
                return False
            if announce:
                await notify(conn, Event(Kind.RETRAIN))
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        return True

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", RETRAIN_LOCK, timeout=5)
            await notify(conn, Event(Kind.RETRAIN))
            await conn.close(timeout=5)
        finally:
            conn.terminate()  # frees the lock whatever happened above (a no-op after a clean close)


async def retrain_running(db: Database) -> bool:
    """Whether some process of the cluster holds the retrain lock."""
    running: bool = await db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = 0 "
        "AND objid::bigint = $1 AND objsubid = 1 AND granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
        RETRAIN_LOCK,
    )
    return running
