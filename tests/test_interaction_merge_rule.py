"""The merge rule, proven through the real database: random sequences of events, in random orders and batch
splits, go through the SQL that the API and `recommender import` share, and every stored row is what a small
Python model of the rule says. Concurrent writers never see a deadlock."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recommender.model.dataset import Book, Interaction
from recommender.storage.catalogue import CatalogueStore
from recommender.storage.db import Database
from tests.support.database import create_database

PAIRS = [(user, book) for user in (1, 2) for book in (1, 2, 3)]
TIMES = [1_600_000_000.0, 1_650_000_000.0, 1_700_000_000.0]  # few, so that ties are common
RATINGS = [None, 1.0, 2.0, 2.7, 4.0, 4.5, 5.0]
EXAMPLES = 150


@dataclass
class Row:
    rating: float | None
    rated_at: float | None
    occurred_at: float


def merged(batches: list[list[Interaction]]) -> dict[tuple[int, int], Row]:
    """The rule, applied one event at a time in arrival order: the latest rating wins, the later arrival on equal
    times; a repeated rating moves rated_at; an unrated event never erases a rating; occurred_at is the earliest."""
    state: dict[tuple[int, int], Row] = {}
    for batch in batches:
        for event in batch:
            assert event.timestamp is not None
            key = (event.user_id, event.book_id)
            row = state.setdefault(key, Row(None, None, event.timestamp))
            row.occurred_at = min(row.occurred_at, event.timestamp)
            if event.rating is not None and (row.rated_at is None or event.timestamp >= row.rated_at):
                row.rating, row.rated_at = event.rating, event.timestamp
    return state


events = st.builds(
    lambda pair, rating, time: Interaction(pair[0], pair[1], rating, time),
    st.sampled_from(PAIRS),
    st.sampled_from(RATINGS),
    st.sampled_from(TIMES),
)
batch_lists = st.lists(st.lists(events, min_size=1, max_size=6), min_size=1, max_size=5)


@pytest.fixture(scope="module")
def merge_database(postgres_url: str) -> str:
    url = create_database(postgres_url)

    async def prepare() -> None:
        async with await Database.connect(url, max_size=1) as db:
            await db.migrate()
            await CatalogueStore(db).import_data([Book(book, f"Book {book}") for book in (1, 2, 3)], [])

    asyncio.run(prepare())
    return url


async def stored(url: str) -> dict[tuple[int, int], Row]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT user_id, book_id, rating, extract(epoch FROM rated_at)::float8 AS rated_at, "
            "extract(epoch FROM occurred_at)::float8 AS occurred_at FROM interactions"
        )
    finally:
        await conn.close()
    return {(r["user_id"], r["book_id"]): Row(r["rating"], r["rated_at"], r["occurred_at"]) for r in rows}


def written(url: str, batches: list[list[Interaction]]) -> dict[tuple[int, int], Row]:
    """The stored rows after writing `batches` one after another into an empty interactions table."""

    async def scenario() -> dict[tuple[int, int], Row]:
        async with await Database.connect(url, max_size=1) as db:
            async with db.transaction() as conn:
                await conn.execute("TRUNCATE interactions, users")
            for batch in batches:
                await CatalogueStore(db).record_interactions(batch)
        return await stored(url)

    return asyncio.run(scenario())


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=batch_lists)
def test_every_order_and_batch_split_of_events_ends_as_the_rule_says(
    merge_database: str, batches: list[list[Interaction]]
) -> None:
    assert written(merge_database, batches) == merged(batches)


def test_an_older_event_arriving_later_never_wins_over_a_repeated_rating(merge_database: str) -> None:
    """The issue's example: 4 at t=1600000000, 4 at t=1700000000, then 2 at t=1650000000: 4 stays."""
    batches = [
        [Interaction(1, 1, 4.0, 1_600_000_000.0)],
        [Interaction(1, 1, 4.0, 1_700_000_000.0)],
        [Interaction(1, 1, 2.0, 1_650_000_000.0)],
    ]
    assert written(merge_database, batches)[(1, 1)] == Row(4.0, 1_700_000_000.0, 1_600_000_000.0)


def test_twenty_concurrent_writers_never_deadlock_and_the_latest_rating_wins(merge_database: str) -> None:
    rng = random.Random(7)
    pairs = [(user, book) for user in range(1, 41) for book in (1, 2, 3)]
    batches = []
    for writer in range(20):
        chosen = rng.sample(pairs, 60)  # overlapping pairs, each writer in its own order
        batches.append(
            [
                Interaction(u, b, float(rng.randint(1, 5)), 1_600_000_000.0 + writer * 1000 + i)
                for i, (u, b) in enumerate(chosen)
            ]
        )

    async def scenario() -> None:
        async with await Database.connect(merge_database, max_size=20) as db:
            async with db.transaction() as conn:
                await conn.execute("TRUNCATE interactions, users")
            for _ in range(3):  # the same batches again, concurrently: more chances to collide
                await asyncio.gather(*(CatalogueStore(db).record_interactions(batch) for batch in batches))

    asyncio.run(scenario())
    latest: dict[tuple[int, int], Interaction] = {}
    for batch in batches:
        for event in batch:
            key = (event.user_id, event.book_id)
            if key not in latest or (event.timestamp or 0) > (latest[key].timestamp or 0):
                latest[key] = event
    rows = asyncio.run(stored(merge_database))
    assert {key: row.rating for key, row in rows.items()} == {key: e.rating for key, e in latest.items()}
    assert {key: row.rated_at for key, row in rows.items()} == {key: e.timestamp for key, e in latest.items()}
