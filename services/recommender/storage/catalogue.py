"""The catalogue and what readers did, in PostgreSQL: books upserted (only the columns given change), interactions
merged by one rule into one row per (user, book), the demo seed, and the reads the service answers from."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import numpy as np

from recommender.model.dataset import Book, Interaction
from recommender.model.filters import NO_YEAR, BookFacts
from recommender.storage.db import BULK_SECONDS, SCHEMA_LOCK, Database
from recommender.storage.events import Event, Kind, notify

# The merge rule of `_merge_interactions`, over the batch in the temporary table incoming_events; it returns how
# many (user, book) rows it added and how many it changed.
_MERGE = """
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
        """

BOOK_COLUMNS = (
    "book_id", "title", "authors", "description", "genres", "published_year", "available", "series", "series_position",
)  # fmt: skip
SELECT_BOOKS = f"SELECT {', '.join(BOOK_COLUMNS)} FROM books"
_BOOK_FIELDS = ", ".join(f"b.{name}" for name in BOOK_COLUMNS)


def _of_genres(parameter: str) -> str:
    """Books `b` of any of the genre keys in the query parameter `parameter` (NULL: every book)."""
    keys = f"{parameter}::text[]"
    return f"({keys} IS NULL OR EXISTS (SELECT 1 FROM unnest(b.genres) g WHERE lower(trim(g)) = ANY({keys})))"


# Writes of the same transaction as the catalogue's own (what interactions say about recommendations).
Also = Callable[[asyncpg.Connection], Awaitable[None]]


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


class CatalogueStore:
    """Books and interactions on `db`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def seed_if_empty(self, books: Sequence[Book], interactions: Sequence[Interaction]) -> bool:
        """Writes the demo catalogue into an empty database; False when there were books already."""
        async with self._db.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
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
        also: Also | None = None,
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

        return await self._db.written(write)

    async def record_interactions(self, interactions: Sequence[Interaction], also: Also | None = None) -> ImportCounts:
        """Merges new events (as `import_data` does) in one transaction and tells the other processes whose
        history changed. Raises UnknownBooks, writing nothing, when a book does not exist. `also(conn)`: more
        writes of the same transaction (what the events say about recommendations: storage/feedback.py)."""

        return await self.import_data([], interactions, also=also)

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

        return await self._db.written(write)

    async def book_facts(self) -> BookFacts:
        """What filters read of every book (model/filters.py), in two light queries (no text); an erased book as
        hidden (a model trained before its erasure still has it), unless it was written again."""
        row = await self._db.fetchrow(
            "SELECT coalesce(array_agg(book_id ORDER BY book_id), '{}') AS ids, "
            "coalesce(array_agg(coalesce(published_year, $1) ORDER BY book_id), '{}') AS years, "
            "coalesce(array_agg(available ORDER BY book_id), '{}') AS available FROM (SELECT book_id, "
            "published_year, available FROM books UNION ALL SELECT book_id, NULL, false FROM erased_books e "
            "WHERE NOT EXISTS (SELECT 1 FROM books b WHERE b.book_id = e.book_id)) known",
            int(NO_YEAR),
        )
        genres = await self._db.fetch(
            "SELECT lower(trim(genre)) AS genre, array_agg(DISTINCT book_id ORDER BY book_id) AS ids "
            "FROM books, unnest(genres) AS genre WHERE trim(genre) <> '' GROUP BY 1"
        )
        assert row is not None
        return BookFacts(
            np.array(row["ids"], dtype=np.int32),
            np.array(row["years"], dtype=np.int32),
            np.array(row["available"], dtype=bool),
            {r["genre"]: np.array(r["ids"], dtype=np.int32) for r in genres},
        )

    async def popular_recently(self, days: int, limit: int, genres: Sequence[str]) -> list[tuple[Book, float]]:
        """The available books read most in the last `days`, each interaction counting half as much every days/3
        days of age, with that decayed count; of any of `genres` (keys, model/filters.py's) when given."""
        rows = await self._db.fetch(
            f"SELECT {_BOOK_FIELDS}, r.score FROM (SELECT book_id, sum(power(0.5, "
            "extract(epoch FROM now() - occurred_at)::float8 / ($1::int * 28800.0))) AS score FROM interactions "
            "WHERE occurred_at > now() - make_interval(days => $1::int) GROUP BY book_id) r "
            "JOIN books b USING (book_id) "
            f"WHERE b.available AND {_of_genres('$3')} ORDER BY r.score DESC, b.book_id LIMIT $2",
            days, limit, list(genres) or None,
        )  # fmt: skip
        return [(book_of(row), float(row["score"])) for row in rows]

    async def newest(self, limit: int, genres: Sequence[str]) -> list[Book]:
        """The available books published most recently (without a year last), then added most recently."""
        rows = await self._db.fetch(
            f"SELECT {_BOOK_FIELDS} FROM books b WHERE b.available AND {_of_genres('$2')} "
            "ORDER BY b.published_year DESC NULLS LAST, b.book_id DESC LIMIT $1",
            limit, list(genres) or None,
        )  # fmt: skip
        return [book_of(row) for row in rows]

    async def books(self, book_ids: Sequence[int]) -> list[Book]:
        """The stored books of these ids, in their order (ids not stored left out)."""
        rows = await self._db.fetch(f"{SELECT_BOOKS} WHERE book_id = ANY($1::integer[])", list(book_ids))
        found = {row["book_id"]: book_of(row) for row in rows}
        return [found[b] for b in book_ids if b in found]

    async def existing_book_ids(self, book_ids: Iterable[int]) -> set[int]:
        rows = await self._db.fetch(
            "SELECT book_id FROM books WHERE book_id = ANY($1::integer[])", sorted(set(book_ids))
        )
        return {row["book_id"] for row in rows}

    async def user_events(self, user_id: int) -> list[tuple[int, float | None]]:
        """(book_id, rating or None) of everything the user interacted with."""
        rows = await self._db.fetch("SELECT book_id, rating FROM interactions WHERE user_id = $1", user_id)
        return [(row["book_id"], row["rating"]) for row in rows]

    async def recent_interactions(self, user_id: int, limit: int) -> list[asyncpg.Record]:
        """The user's latest `limit` interactions: book_id, title, authors, rating (or None) and occurred_at
        (when the user last rated the book, else when they first interacted with it), most recent first."""
        return await self._db.fetch(
            "SELECT i.book_id, b.title, b.authors, i.rating, coalesce(i.rated_at, i.occurred_at) AS occurred_at "
            "FROM interactions i JOIN books b USING (book_id) WHERE i.user_id = $1 "
            "ORDER BY coalesce(i.rated_at, i.occurred_at) DESC, i.book_id LIMIT $2",
            user_id,
            limit,
        )

    async def interactions_changed_since(self, moment: datetime | None) -> int:
        """(user, book) rows added or changed after `moment` (all of them when None)."""
        count: int = await self._db.fetchval(
            "SELECT count(*) FROM interactions WHERE $1::timestamptz IS NULL OR updated_at > $1", moment
        )
        return count

    async def counts(self) -> dict[str, int]:
        row = await self._db.fetchrow(
            "SELECT (SELECT count(*) FROM books) AS books, (SELECT count(*) FROM users) AS users, "
            "(SELECT count(*) FROM interactions) AS interactions"
        )
        assert row is not None
        return dict(row)


def book_of(row: asyncpg.Record) -> Book:
    return Book(
        book_id=row["book_id"],
        title=row["title"],
        authors=row["authors"],
        description=row["description"],
        genres=tuple(row["genres"]),
        published_year=row["published_year"],
        available=row["available"],
        series=row["series"] or "",
        series_position=row["series_position"],
    )


async def _check_books_exist(conn: asyncpg.Connection, interactions: Sequence[Interaction]) -> None:
    """Raises UnknownBooks for books not stored; the others stay locked against an erasure until this transaction
    ends (an erasure running now is waited for, and its book is then unknown)."""
    wanted = sorted({i.book_id for i in interactions})
    found = await conn.fetch(
        "SELECT book_id FROM books WHERE book_id = ANY($1::integer[]) ORDER BY book_id FOR KEY SHARE", wanted
    )
    missing = sorted(set(wanted) - {row["book_id"] for row in found})
    if missing:
        raise UnknownBooks(missing)


async def _users_held(conn: asyncpg.Connection, user_ids: Sequence[int]) -> None:
    """Creates the users not stored, and locks every one against an erasure until this transaction ends: a user
    erased meanwhile (waited for) is created again, so that the write lands after the erasure, as a new reader's."""
    while True:
        await conn.execute("INSERT INTO users (user_id) SELECT unnest($1::integer[]) ON CONFLICT DO NOTHING", user_ids)
        held = await conn.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM users WHERE user_id = ANY($1::integer[]) ORDER BY user_id "
            "FOR KEY SHARE) locked",
            user_ids,
        )
        if held == len(user_ids):
            return


async def _notify_changes(
    conn: asyncpg.Connection, book_ids: Sequence[int], interactions: Sequence[Interaction]
) -> None:
    """Tells the other processes, when this transaction commits, which books and users' histories changed."""
    if book_ids:
        await notify(conn, Event.about(Kind.BOOKS, book_ids))
    if interactions:
        await notify(conn, Event.about(Kind.INTERACTIONS, (i.user_id for i in interactions)))


async def _upsert_books(conn: asyncpg.Connection, books: Iterable[Book], columns: Collection[str]) -> None:
    """Inserts new books whole; of existing ones, updates only `columns`."""
    records = [
        (
            b.book_id, b.title, b.authors, b.description, list(b.genres), b.published_year, b.available,
            b.series or None, b.series_position if b.series else None,
        )
        for b in books
    ]  # fmt: skip
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
    # A book erased before and written again is a book again, and its erased_books row stays: models trained
    # before the erasure learn from it to forget the old book (serving/freshness.py).


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
    await _users_held(conn, sorted({i.user_id for i in interactions}))  # in key order
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
        _MERGE,
        timeout=BULK_SECONDS,
    )
    assert counts is not None
    return ImportCounts(added=counts["added"], updated=counts["updated"])
