"""All SQL of the service: migrations, the training snapshot, user histories, imports and the demo seed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from types import TracebackType
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import asyncpg
import numpy as np
import numpy.typing as npt

from recommender.model.dataset import Book, Interaction, TrainingData
from recommender.storage.events import Event, Kind, notify

log = logging.getLogger(__name__)

# One lock id for schema changes and the demo seed, so that several processes starting together take turns.
_SCHEMA_LOCK = 0x7265636F  # "reco"
# Held while a retrain runs anywhere in the cluster (see RetrainLock).
_RETRAIN_LOCK = 0x72657472  # "retr"

# Statements that move a whole catalogue (imports, the demo seed, the training snapshot) may take minutes at
# millions of interactions; every other statement keeps the pool's 60 s.
BULK_SECONDS = 3600.0
WRITE_ATTEMPTS = 5  # a write PostgreSQL aborts for a deadlock or a serialization failure is run again

T = TypeVar("T")

BOOK_COLUMNS = ("book_id", "title", "authors", "description", "genres", "published_year")
# Rows changed by a transaction the snapshot $1 does not see; every transaction before its xmin is seen, so the
# index on changed_xid narrows the rows to look at.
_UNSEEN = (
    "changed_xid >= pg_snapshot_xmin($1::text::pg_snapshot)::text::bigint "
    "AND NOT pg_visible_in_snapshot(changed_xid::text::xid8, $1::text::pg_snapshot)"
)
_SELECT_BOOKS = f"SELECT {', '.join(BOOK_COLUMNS)} FROM books"


@dataclass(frozen=True)
class ImportCounts:
    """Interaction rows written: new (user, book) pairs, and pairs whose rating or time changed."""

    added: int
    updated: int


class UnknownBooks(ValueError):
    """Interactions refer to books that are not in the catalogue."""

    def __init__(self, book_ids: Sequence[int]) -> None:
        self.book_ids = list(book_ids)
        super().__init__("interactions refer to books that do not exist: " + ", ".join(map(str, self.book_ids)))


class UntitledBooks(ValueError):
    """New books without a title (the catalogue needs one)."""

    def __init__(self, book_ids: Sequence[int]) -> None:
        self.book_ids = list(book_ids)
        super().__init__("new books need a title: " + ", ".join(map(str, self.book_ids)))


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


_CONNECT_ERRORS = (
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


def _unavailable(dsn: str, exc: BaseException) -> DatabaseUnavailable:
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
        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=max_size, command_timeout=60, timeout=connect_seconds
            )
        except _CONNECT_ERRORS as exc:
            raise _unavailable(dsn, exc) from exc
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

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        return list(await self._pool.fetch(query, *args))

    async def fetchrow(self, query: str, *args: object) -> asyncpg.Record | None:
        return await self._pool.fetchrow(query, *args)

    async def execute_many(self, query: str, rows: list[tuple[object, ...]]) -> None:
        await self._pool.executemany(query, rows)

    async def migrate(self) -> list[str]:
        """Applies the migrations not applied yet, in name order, each in its own transaction; returns them."""
        applied_now = []
        async with self.transaction() as conn:
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
        async with self.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM books)"):
                return False
            await _upsert_books(conn, books, BOOK_COLUMNS)
            await _merge_interactions(conn, interactions)
        return True

    async def import_data(
        self,
        books: Sequence[Book],
        interactions: Sequence[Interaction],
        book_columns: Collection[str] = BOOK_COLUMNS,
        also: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
    ) -> ImportCounts:
        """Upserts books and merges interactions in one transaction: all of it lands, or none.

        Only the `book_columns` of books already stored are updated; the others keep their values. Interactions
        are merged into one row per (user, book) (see `_merge_interactions`), so importing the same rows twice
        changes nothing. Raises ValueError naming the first interactions whose book does not exist.
        """

        async def write(conn: asyncpg.Connection) -> ImportCounts:
            await _upsert_books(conn, books, book_columns)
            await _check_books_exist(conn, interactions)
            counts = await _merge_interactions(conn, interactions)
            if also is not None:
                await also(conn)
            await _notify_changes(conn, [b.book_id for b in books], interactions)
            return counts

        return await self._retried(write)

    async def record_interactions(
        self, interactions: Sequence[Interaction], also: Callable[[asyncpg.Connection], Awaitable[None]] | None = None
    ) -> ImportCounts:
        """Merges new events (as `import_data` does) in one transaction and tells the other processes whose
        history changed. Raises UnknownBooks, writing nothing, when a book does not exist. `also(conn)`: more
        writes of the same transaction (what the events say about recommendations: storage/online.py)."""

        return await self.import_data([], interactions, also=also)

    async def written(self, write: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """`write(conn)` in one transaction, with the retries and the CommitUncertain of this module's own writes
        (for the other stores on this database)."""
        return await self._retried(write)

    async def upsert_books(self, books: Sequence[tuple[Book, Collection[str]]]) -> ImportCounts:
        """Adds or updates books in one transaction: of a stored book, only its given columns change. Raises
        UntitledBooks, writing nothing, for new books without a title."""
        ids = sorted({book.book_id for book, _ in books})

        async def write(conn: asyncpg.Connection) -> ImportCounts:
            stored = dict(await conn.fetch("SELECT book_id, title FROM books WHERE book_id = ANY($1::integer[])", ids))
            untitled = [
                book.book_id for book, columns in books if "title" not in columns and book.book_id not in stored
            ]
            if untitled:
                raise UntitledBooks(untitled)
            groups: dict[frozenset[str], list[Book]] = {}
            for book, columns in books:
                # The row proposed for a stored book must pass the table's checks before it becomes an update.
                kept = book if "title" in columns else dataclasses.replace(book, title=stored[book.book_id])
                groups.setdefault(frozenset(columns), []).append(kept)
            for columns, group in sorted(groups.items(), key=lambda item: sorted(item[0])):
                await _upsert_books(conn, group, columns)
            await _notify_changes(conn, ids, [])
            return ImportCounts(added=len(ids) - len(stored), updated=len(stored))

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

    async def load_training_data(self) -> TrainingData:
        """One consistent snapshot of books and interactions (a single REPEATABLE READ transaction)."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            # The transaction's own snapshot, taken by its first statement: what this data includes, exactly.
            snapshot = await conn.fetchval("SELECT pg_current_snapshot()::text")
            book_rows = await conn.fetch(f"{_SELECT_BOOKS} ORDER BY book_id")
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
        books = [_book(row) for row in book_rows]
        return TrainingData(
            books=books,
            user_ids=rows["user_id"].astype(np.int32),
            book_ids=rows["book_id"].astype(np.int32),
            ratings=rows["rating"].astype(np.float32),
            timestamps=rows["time"].astype(np.float64),
            snapshot=snapshot,
        )

    async def existing_book_ids(self, book_ids: Iterable[int]) -> set[int]:
        rows = await self._pool.fetch(
            "SELECT book_id FROM books WHERE book_id = ANY($1::integer[])", sorted(set(book_ids))
        )
        return {row["book_id"] for row in rows}

    async def user_history(self, user_id: int) -> list[tuple[int, float | None]]:
        """(book_id, rating or None) of everything the user interacted with."""
        rows = await self._pool.fetch("SELECT book_id, rating FROM interactions WHERE user_id = $1", user_id)
        return [(row["book_id"], row["rating"]) for row in rows]

    async def recent_interactions(self, user_id: int, limit: int) -> list[asyncpg.Record]:
        """The user's latest `limit` interactions: book_id, title, authors, rating (or None) and occurred_at
        (when the user last rated the book, else when they first interacted with it), most recent first."""
        return await self.fetch(
            "SELECT i.book_id, b.title, b.authors, i.rating, coalesce(i.rated_at, i.occurred_at) AS occurred_at "
            "FROM interactions i JOIN books b USING (book_id) WHERE i.user_id = $1 "
            "ORDER BY coalesce(i.rated_at, i.occurred_at) DESC, i.book_id LIMIT $2",
            user_id,
            limit,
        )

    async def users_changed_since(self, snapshot: str) -> list[int]:
        """Users with interactions added or changed by transactions `snapshot` (a pg_snapshot as text) does not
        see: exactly what a model trained on that snapshot misses."""
        rows = await self._pool.fetch(f"SELECT DISTINCT user_id FROM interactions WHERE {_UNSEEN}", snapshot)
        return [row["user_id"] for row in rows]

    async def books_changed_since(self, snapshot: str) -> list[Book]:
        """Books added or changed by transactions `snapshot` does not see."""
        return await self._books(f"WHERE {_UNSEEN}", snapshot)

    async def _books(self, where: str, *args: object) -> list[Book]:
        rows = await self._pool.fetch(f"{_SELECT_BOOKS} {where} ORDER BY book_id", *args)
        return [_book(row) for row in rows]

    async def retrain_running(self) -> bool:
        """Whether some process of the cluster holds the retrain lock."""
        running: bool = await self._pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = 0 "
            "AND objid::bigint = $1 AND objsubid = 1 AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
            _RETRAIN_LOCK,
        )
        return running

    async def save_artifact_files(self, version: str, files: dict[str, bytes]) -> None:
        async with self.transaction() as conn:
            await conn.execute("DELETE FROM model_artifacts WHERE version = $1", version)
            await conn.executemany(
                "INSERT INTO model_artifacts (version, name, data) VALUES ($1, $2, $3)",
                [(version, name, data) for name, data in files.items()],
                timeout=BULK_SECONDS,
            )

    async def artifact_files(self, version: str) -> dict[str, bytes]:
        """The stored files of `version`; empty when the database holds none."""
        rows = await self._pool.fetch(
            "SELECT name, data FROM model_artifacts WHERE version = $1", version, timeout=BULK_SECONDS
        )
        return {row["name"]: bytes(row["data"]) for row in rows}

    async def artifact_versions(self) -> list[str]:
        """The versions whose files the database holds."""
        rows = await self._pool.fetch("SELECT DISTINCT version FROM model_artifacts")
        return [row["version"] for row in rows]

    async def delete_artifact_files(self, versions: Collection[str]) -> None:
        await self._pool.execute("DELETE FROM model_artifacts WHERE version = ANY($1::text[])", list(versions))

    async def interactions_changed_since(self, moment: datetime | None) -> int:
        """(user, book) rows added or changed after `moment` (all of them when None)."""
        count: int = await self._pool.fetchval(
            "SELECT count(*) FROM interactions WHERE $1::timestamptz IS NULL OR updated_at > $1", moment
        )
        return count

    async def counts(self) -> dict[str, int]:
        row = await self._pool.fetchrow(
            "SELECT (SELECT count(*) FROM books) AS books, (SELECT count(*) FROM users) AS users, "
            "(SELECT count(*) FROM interactions) AS interactions"
        )
        assert row is not None
        return dict(row)


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
        except _CONNECT_ERRORS as exc:
            raise _unavailable(self._dsn, exc) from exc
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _RETRAIN_LOCK):
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
            await conn.execute("SELECT pg_advisory_unlock($1)", _RETRAIN_LOCK, timeout=5)
            await notify(conn, Event(Kind.RETRAIN))
            await conn.close(timeout=5)
        finally:
            conn.terminate()  # frees the lock whatever happened above (a no-op after a clean close)


def _book(row: asyncpg.Record) -> Book:
    return Book(
        book_id=row["book_id"],
        title=row["title"],
        authors=row["authors"],
        description=row["description"],
        genres=tuple(row["genres"]),
        published_year=row["published_year"],
    )


async def _check_books_exist(conn: asyncpg.Connection, interactions: Sequence[Interaction]) -> None:
    missing = await conn.fetch(
        "SELECT DISTINCT b FROM unnest($1::integer[]) AS b WHERE NOT EXISTS "
        "(SELECT 1 FROM books WHERE book_id = b) ORDER BY b",
        sorted({i.book_id for i in interactions}),
    )
    if missing:
        raise UnknownBooks([row["b"] for row in missing])


async def _notify_changes(
    conn: asyncpg.Connection, book_ids: Sequence[int], interactions: Sequence[Interaction]
) -> None:
    """Tells the other processes, when this transaction commits, which books and users' histories changed."""
    if book_ids:
        await notify(conn, Event.about(Kind.BOOKS, book_ids))
    if interactions:
        await notify(conn, Event.about(Kind.INTERACTIONS, (i.user_id for i in interactions)))


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


@asynccontextmanager
async def _transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    async with pool.acquire() as conn, conn.transaction():
        yield conn


async def _upsert_books(conn: asyncpg.Connection, books: Iterable[Book], columns: Collection[str]) -> None:
    """Inserts new books whole; of existing ones, updates only `columns`."""
    records = [(b.book_id, b.title, b.authors, b.description, list(b.genres), b.published_year) for b in books]
    if not records:
        return
    updated = [name for name in BOOK_COLUMNS if name in columns and name != "book_id"]
    await conn.execute("CREATE TEMPORARY TABLE incoming_books (LIKE books INCLUDING DEFAULTS) ON COMMIT DROP")
    await conn.copy_records_to_table(
        "incoming_books", records=records, columns=list(BOOK_COLUMNS), timeout=BULK_SECONDS
    )
    names = ", ".join(BOOK_COLUMNS)
    assignments = "".join(f"{name} = excluded.{name}, " for name in updated)
    await conn.execute(
        f"INSERT INTO books ({names}) SELECT {names} FROM incoming_books ORDER BY book_id "  # rows locked in key order
        f"ON CONFLICT (book_id) DO UPDATE SET {assignments}updated_at = now(), "
        "changed_xid = pg_current_xact_id()::text::bigint",
        timeout=BULK_SECONDS,
    )
    await conn.execute("DROP TABLE incoming_books")  # a transaction may upsert several groups of columns


async def _merge_interactions(conn: asyncpg.Connection, interactions: Sequence[Interaction]) -> ImportCounts:
    """Merges events into one row per (user, book) by the merge rule, so that the same events merged twice, or
    in another order, or split into other batches, end the same:

    - the stored rating is the one with the latest timestamp (an event without one happened at the transaction's
      now()); on equal timestamps the later arrival wins (within a batch, the later entry);
    - a repeated rating with a newer timestamp moves `rated_at` forward, so that an older event arriving later
      cannot win over it;
    - an event without a rating (a read, a click) never erases a rating;
    - `occurred_at` is the earliest event's time (the first contact);
    - rows that nothing changes are not touched, so their `updated_at` stays.

    Rows are written in (user, book) order, so that concurrent merges lock them in the same order (no deadlock).
    """
    if not interactions:
        return ImportCounts(0, 0)
    await conn.execute(
        "INSERT INTO users (user_id) SELECT unnest($1::integer[]) ON CONFLICT DO NOTHING",  # in key order
        sorted({i.user_id for i in interactions}),
    )
    # Unix seconds travel as numbers (no datetime object per row); a missing time is the transaction's now().
    await conn.execute(
        "CREATE TEMPORARY TABLE incoming_events (seq integer, user_id integer, book_id integer, rating float8, "
        "seconds float8) ON COMMIT DROP"
    )
    await conn.copy_records_to_table(
        "incoming_events",
        records=[(seq, i.user_id, i.book_id, i.rating, i.timestamp) for seq, i in enumerate(interactions)],
        columns=["seq", "user_id", "book_id", "rating", "seconds"],
        timeout=BULK_SECONDS,
    )
    counts = await conn.fetchrow(
        """
        WITH events AS (
            SELECT seq, user_id, book_id, rating, coalesce(to_timestamp(seconds), now()) AS occurred_at
            FROM incoming_events
        ), grouped AS (
            SELECT user_id, book_id,
                   (array_agg(rating ORDER BY occurred_at DESC, seq DESC) FILTER (WHERE rating IS NOT NULL))[1]
                       AS rating,
                   max(occurred_at) FILTER (WHERE rating IS NOT NULL) AS rated_at,
                   min(occurred_at) AS occurred_at
            FROM events GROUP BY user_id, book_id
        ), merged AS (
        INSERT INTO interactions AS i (user_id, book_id, rating, rated_at, occurred_at)
        SELECT user_id, book_id, rating, rated_at, occurred_at FROM grouped ORDER BY user_id, book_id
        ON CONFLICT (user_id, book_id) DO UPDATE SET
            rating = CASE WHEN excluded.rated_at >= coalesce(i.rated_at, '-infinity') THEN excluded.rating
                          ELSE i.rating END,
            rated_at = CASE WHEN excluded.rated_at >= coalesce(i.rated_at, '-infinity') THEN excluded.rated_at
                            ELSE i.rated_at END,
            occurred_at = least(i.occurred_at, excluded.occurred_at),
            updated_at = now(),
            changed_xid = pg_current_xact_id()::text::bigint
        WHERE (excluded.rated_at >= coalesce(i.rated_at, '-infinity')
               AND (excluded.rated_at IS DISTINCT FROM i.rated_at OR excluded.rating IS DISTINCT FROM i.rating))
           OR excluded.occurred_at < i.occurred_at
        RETURNING (xmax = 0) AS inserted
        )
        SELECT count(*) FILTER (WHERE inserted) AS added, count(*) FILTER (WHERE NOT inserted) AS updated FROM merged
        """,
        timeout=BULK_SECONDS,
    )
    assert counts is not None
    return ImportCounts(added=counts["added"], updated=counts["updated"])
