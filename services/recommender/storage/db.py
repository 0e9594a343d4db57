"""The database: a connection pool, its transactions (writes retried on deadlock, a commit cut off told apart), the
migrations, and what a failure means (the database away is a 503, never a problem with the request). Each concern's
SQL lives in a module of its own beside this one: catalogue.py, snapshot.py, registry.py, feedback.py, lock.py,
blobs.py, events.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib import resources
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import asyncpg

log = logging.getLogger(__name__)

# One lock id for schema changes and the demo seed, so that several processes starting together take turns.
SCHEMA_LOCK = 0x7265636F  # "reco"

# Statements that move a whole catalogue (imports, the demo seed, the training snapshot) may take minutes at
# millions of interactions; every other statement keeps the pool's 60 s.
BULK_SECONDS = 3600.0
WRITE_ATTEMPTS = 5  # a write PostgreSQL aborts for a deadlock or a serialization failure is run again

T = TypeVar("T")


class OneLineFailures(logging.Filter):
    """asyncpg's pool logs each failed attempt to reconnect in the background with a traceback; during an outage
    that is one every few seconds. The failure is named on the line instead, so the log stays one line each."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


_POOL_LOG_FILTER = OneLineFailures()  # one instance, so that adding it again is a no-op


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached or refuses the connection; the message says where and why."""


class CommitUncertain(DatabaseUnavailable):
    """The connection was lost while committing: the write may or may not have landed. Writes merge, so sending
    the same one again is safe."""

    def __init__(self, where: str, exc: BaseException) -> None:
        super().__init__(
            f"the connection to PostgreSQL at {where} was lost while committing ({type(exc).__name__}): the write "
            "may have landed; sending it again is safe (the same entries merge into the same rows)"
        )


CONNECT_ERRORS = (
    OSError,
    TimeoutError,
    ValueError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)

# The database is away, shutting down or out of resources: a 503 / UNAVAILABLE, not a problem with the request.
# A connection cut in the middle of a statement can leave asyncpg's protocol in a state it does not expect
# (InternalClientError "cannot switch to state ..."): the same cause, the same answer.
DATABASE_ERRORS = (
    DatabaseUnavailable,
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
)


def unavailable(dsn: str, exc: BaseException) -> DatabaseUnavailable:
    return DatabaseUnavailable(f"cannot connect to PostgreSQL at {describe(dsn)}: {str(exc) or type(exc).__name__}")


def describe(dsn: str) -> str:
    """host:port/dbname of a URL (or the socket folder of one that names it), without the user or the password."""
    parts = urlsplit(dsn)
    socket_dir = parse_qs(parts.query).get("host", [""])[0]
    host = parts.hostname or socket_dir or "localhost"
    return f"{host}:{parts.port or 5432}{parts.path or '/'}"


class Database:
    """A connection pool and the queries the service runs; `async with Database.connect(dsn) as db:`."""

    def __init__(self, pool: asyncpg.Pool, dsn: str = "") -> None:
        self._pool = pool
        self.where = describe(dsn) if dsn else "the database"  # host:port/dbname, for messages

    @classmethod
    async def connect(cls, dsn: str, *, max_size: int = 4, connect_seconds: float = 10) -> Database:
        """Raises DatabaseUnavailable, naming the server, when it cannot connect."""
        logging.getLogger("asyncpg.pool").addFilter(_POOL_LOG_FILTER)
        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=max_size, command_timeout=60, timeout=connect_seconds
            )
        except CONNECT_ERRORS as exc:
            raise unavailable(dsn, exc) from exc
        return cls(pool, dsn)

    async def close(self, seconds: float = 2.0) -> None:
        """Closes the pool; connections still busy after `seconds` (a database that went away) are dropped."""
        try:
            async with asyncio.timeout(seconds):
                await self._pool.close()
        except TimeoutError:
            self._pool.terminate()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def transaction(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        """`async with db.transaction() as conn:` a pooled connection inside a transaction."""
        return _transaction(self._pool)

    def unreachable(self, exc: BaseException) -> str:
        """Words for a failure that DATABASE_ERRORS caught, naming the database."""
        if isinstance(exc, DatabaseUnavailable):
            return str(exc)
        return f"PostgreSQL at {self.where} cannot be reached ({type(exc).__name__}: {str(exc)[:200]})"

    async def fetch(self, query: str, *args: object, seconds: float | None = None) -> list[asyncpg.Record]:
        """The rows of `query`; `seconds`: longer than the pool's 60 s (BULK_SECONDS, for whole catalogues)."""
        return list(await self._pool.fetch(query, *args, timeout=seconds))

    async def fetchrow(self, query: str, *args: object) -> asyncpg.Record | None:
        return await self._pool.fetchrow(query, *args)

    async def execute_many(self, query: str, rows: list[tuple[object, ...]]) -> None:
        await self._pool.executemany(query, rows)

    async def migrate(self) -> list[str]:
        """Applies the migrations not applied yet, in name order, each in its own transaction; returns them."""
        applied_now = []
        async with self.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
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

    async def fetchval(self, query: str, *args: object) -> Any:
        return await self._pool.fetchval(query, *args)

    async def execute(self, query: str, *args: object) -> str:
        result: str = await self._pool.execute(query, *args)
        return result

    def connection(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        """`async with db.connection() as conn:` a pooled connection, no transaction opened."""
        return self._pool.acquire()

    async def written(self, write: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """`write(conn)` in one transaction, run again when PostgreSQL aborts it for a deadlock or a serialization
        failure; a connection lost while committing raises CommitUncertain (it may have landed). Every write of
        every store goes through here."""
        return await self._retried(write)

    async def _retried(self, write: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """`write` in one transaction, run again when PostgreSQL aborts it for a deadlock or a serialization
        failure (what the other writer did is then part of what it sees); writes lock rows in key order, so this
        is the rare case. A connection lost while committing raises CommitUncertain: the write may have landed."""
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                return await self._committed(write)
            except asyncpg.TransactionRollbackError as exc:
                if attempt == WRITE_ATTEMPTS:
                    raise
                log.info("retrying a write that PostgreSQL aborted (%s)", type(exc).__name__)
                await asyncio.sleep(random.uniform(0.005, 0.05) * attempt)
        raise AssertionError("unreachable")

    async def _committed(self, write: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """`write` in a transaction; what fails after the commit (giving the connection back) is not a failure."""
        committed = False
        try:
            async with self._pool.acquire() as conn:
                transaction = conn.transaction()
                await transaction.start()
                try:
                    result = await write(conn)
                except BaseException:
                    with contextlib.suppress(*DATABASE_ERRORS):
                        await transaction.rollback()
                    raise
                try:
                    await transaction.commit()
                except DATABASE_ERRORS as exc:
                    raise CommitUncertain(self.where, exc) from exc
                committed = True
        except DATABASE_ERRORS:
            if not committed:
                raise
            log.info("a write committed; its connection failed afterwards")
        return result


@asynccontextmanager
async def _transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    async with pool.acquire() as conn, conn.transaction():
        yield conn
