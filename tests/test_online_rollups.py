"""The online record at volume (storage/feedback.py): figures read from roll-ups kept up to date as impressions,
feedback and reads arrive, equal to the attribution rules applied from scratch (a Python oracle here), for any
period and bucket width; retention by dropping day partitions, the roll-ups following."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest

from recommender.model.dataset import Book, Interaction
from recommender.settings import Settings
from recommender.storage.catalogue import CatalogueStore
from recommender.storage.db import Database
from recommender.storage.feedback import Feedback, Impression, OnlineStore
from recommender.storage.partitions import ensure_partition
from recommender.storage.rollups import CLOCK_SKEW, EPOCH
from recommender.storage.sums import OnlineSums

T = TypeVar("T")
WINDOW = timedelta(hours=1)
BOOKS = range(1, 31)


@dataclass(frozen=True)
class Read:
    user_id: int
    book_id: int
    at: datetime


Figures = dict[tuple[str, datetime], OnlineSums]  # by version and bucket


def oracle(
    impressions: Sequence[Impression],
    feedback: Sequence[Feedback],
    reads: Sequence[Read],
    since: datetime = EPOCH,
    bucket: timedelta | None = None,
) -> Figures:
    """The attribution rules of storage/feedback.py, from scratch: per (version, bucket) the per-reader sums."""
    by_id = {i.recommendation_id: i for i in impressions}
    hits: dict[uuid.UUID, list[tuple[int, bool]]] = defaultdict(list)
    for f in feedback:
        shown = by_id.get(f.recommendation_id)
        if shown is None or f.event not in ("click", "read") or f.book_id not in shown.books:
            continue
        if f.user_id is not None and f.user_id != shown.user_id:
            continue
        if shown.shown_at - CLOCK_SKEW <= f.occurred_at < shown.shown_at + WINDOW:
            hits[f.recommendation_id].append((f.book_id, f.event == "click"))
    first_reads: dict[tuple[int, int], Read] = {}  # one interaction per reader and book, at its first contact
    for r in reads:
        known = first_reads.get((r.user_id, r.book_id))
        first_reads[(r.user_id, r.book_id)] = r if known is None or r.at < known.at else known
    for r in first_reads.values():
        showing = [
            i
            for i in impressions
            if i.user_id == r.user_id and r.book_id in i.books and i.shown_at <= r.at < i.shown_at + WINDOW
        ]
        if showing:
            hits[max(showing, key=lambda i: i.shown_at).recommendation_id].append((r.book_id, False))
    per_user: dict[tuple[str, datetime, int], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for i in impressions:
        if i.shown_at < since:
            continue
        at = since if bucket is None else EPOCH + (i.shown_at - EPOCH) // bucket * bucket
        found = hits[i.recommendation_id]
        figures = per_user[(i.version, at, i.user_id)]
        figures[0] += 1
        figures[1] += any(click for _, click in found)
        figures[2] += len({book for book, click in found if not click})
        figures[3] += 1.0 / min(i.books.index(book) + 1 for book, _ in found) if found else 0.0
    grouped: dict[tuple[str, datetime], list[list[float]]] = defaultdict(list)
    for (version, at, _user), figures in per_user.items():
        grouped[(version, at)].append(figures)
    return {key: OnlineSums.of_users(*map(list, zip(*rows, strict=True))) for key, rows in grouped.items()}


def flat(sums: OnlineSums) -> list[float]:
    s = sums
    return [
        s.impressions,
        s.users,
        s.impression_squares,
        *(x for part in (s.clicks, s.reads, s.reciprocal_ranks) for x in dataclasses.astuple(part)),
    ]


def assert_same(found: Figures, expected: Figures) -> None:
    assert set(found) == set(expected)
    for key, sums in expected.items():
        assert flat(found[key]) == pytest.approx(flat(sums)), key


def run_db(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    async def go() -> T:
        async with await Database.connect(settings.database_url or "") as db:
            await db.migrate()
            await CatalogueStore(db).import_data([Book(book_id=b, title=f"b{b}") for b in BOOKS], [])
            return await work(db)

    return asyncio.run(go())


class Traffic:
    """Random answers, feedback (honest and forged) and reads over the last three hours."""

    def __init__(self, seed: int, now: datetime) -> None:
        self.rng, self.now = random.Random(seed), now
        self.impressions: list[Impression] = []
        self.feedback: list[Feedback] = []
        self.reads: list[Read] = []

    def answers(self, count: int, before: timedelta = timedelta(hours=3)) -> list[Impression]:
        made = [
            Impression(
                uuid.uuid4(),
                self.rng.randint(1, 25),
                self.rng.choice(["v1", "v2"]),
                self.rng.sample(list(BOOKS), 5),
                self.now - timedelta(seconds=self.rng.uniform(0, before.total_seconds())),
            )
            for _ in range(count)
        ]
        self.impressions += made
        return made

    def events(self, count: int) -> list[Feedback]:
        made = []
        for _ in range(count):
            shown = self.rng.choice(self.impressions)
            book = self.rng.choice(shown.books if self.rng.random() < 0.8 else list(BOOKS))
            delay = timedelta(minutes=self.rng.uniform(-3, 80))  # some before the answer, some after the window
            user = self.rng.choice([None, None, shown.user_id, shown.user_id + 1])
            event = self.rng.choice(["click", "click", "read", "dismiss"])
            made.append(Feedback(shown.recommendation_id, book, event, min(shown.shown_at + delay, self.now), user))
        self.feedback += made
        return made

    def interactions(self, count: int) -> list[Interaction]:
        made = []
        for _ in range(count):
            shown = self.rng.choice(self.impressions)
            book = self.rng.choice(shown.books if self.rng.random() < 0.7 else list(BOOKS))
            at = min(shown.shown_at + timedelta(minutes=self.rng.uniform(-10, 90)), self.now)
            self.reads.append(Read(shown.user_id, book, at))
            made.append(Interaction(shown.user_id, book, 5.0, at.timestamp()))
        return made


def test_the_rolled_up_figures_are_the_attribution_rules_applied_from_scratch(settings: Settings) -> None:
    """Impressions, feedback and reads in rounds, each followed by a read of the figures (which rolls up what
    arrived since): answers that come after a read and take it over from an older one, reads that move, forged
    feedback. Every period and bucket width gives what the rules give from scratch."""
    now = datetime.now(UTC)
    traffic = Traffic(11, now)

    async def scenario(db: Database) -> None:
        store, catalogue = OnlineStore(db, WINDOW), CatalogueStore(db)
        for _round in range(4):
            await store.add_impressions(traffic.answers(60))
            await store.add_feedback(traffic.events(40))
            for interaction in traffic.interactions(30):  # one at a time: a later one may move an earlier read
                await catalogue.record_interactions([interaction])
            everything = {(v, EPOCH): s for v, s in (await store.sums()).items()}
            assert_same(everything, oracle(traffic.impressions, traffic.feedback, traffic.reads))
        assert sum(s.clicks.total for s in everything.values()) > 10  # the traffic did attribute things
        assert sum(s.reads.total for s in everything.values()) > 10
        for since in (now - timedelta(minutes=47, seconds=13), now - timedelta(hours=2)):
            period = {(v, since): s for v, s in (await store.sums(since)).items()}
            assert_same(period, oracle(traffic.impressions, traffic.feedback, traffic.reads, since))
            assert set(await store.sums(since, ["v2"])) == {"v2"}
        for width in (timedelta(minutes=10), timedelta(minutes=60), timedelta(minutes=15)):  # 15: from impressions
            since = now - timedelta(hours=2, minutes=3)
            series = await store.series(since, width)
            found = {(v, at): s for v, points in series.items() for at, s in points}
            assert_same(found, oracle(traffic.impressions, traffic.feedback, traffic.reads, since, width))
        # Retention within a day: the answers before the cut leave every roll-up; the rest is as if they never were.
        cut = now - timedelta(hours=1, minutes=33)
        assert await store.prune(cut) == (len([i for i in traffic.impressions if i.shown_at < cut]), 0)
        kept = [i for i in traffic.impressions if i.shown_at >= cut]
        everything = {(v, EPOCH): s for v, s in (await store.sums()).items()}
        assert_same(everything, oracle(kept, traffic.feedback, traffic.reads))
        for width in (timedelta(minutes=10), timedelta(minutes=30)):
            series = await store.series(cut - timedelta(hours=1), width)
            found = {(v, at): s for v, points in series.items() for at, s in points}
            assert_same(found, oracle(kept, traffic.feedback, traffic.reads, cut - timedelta(hours=1), width))

    run_db(settings, scenario)


def test_retention_drops_day_partitions_and_the_roll_ups_follow(settings: Settings) -> None:
    now = datetime.now(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    traffic = Traffic(5, now)

    async def partitions(db: Database) -> list[str]:
        rows = await db.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'impressions'::regclass ORDER BY 1"
        )
        return [row["relname"] for row in rows]

    async def scenario(db: Database) -> None:
        store = OnlineStore(db, WINDOW)
        old = traffic.answers(20, before=timedelta(0))
        old = [dataclasses.replace(i, shown_at=i.shown_at - timedelta(days=3)) for i in old]
        traffic.impressions = list(old)
        await store.add_impressions(old)  # no partition for that day: the default one takes them
        assert (await store.sums())["v1"].impressions + (await store.sums())["v2"].impressions == 20
        assert await store.prune(now - timedelta(days=2)) == (20, 0)
        assert await store.sums() == {}
        names = await partitions(db)
        for ahead in range(3):
            assert f"impressions_p{today + timedelta(days=ahead):%Y%m%d}" in names
        fresh = traffic.answers(30, before=timedelta(minutes=30))
        traffic.impressions = list(fresh)
        await store.add_impressions(fresh)
        await store.add_feedback(traffic.events(20))
        assert await db.fetchval(f"SELECT count(*) FROM impressions_p{today:%Y%m%d}") == len(
            [i for i in fresh if i.shown_at >= today]
        )
        expected = oracle(traffic.impressions, traffic.feedback, [])
        assert_same({(v, EPOCH): s for v, s in (await store.sums()).items()}, expected)
        # A cut after today: today's partition is dropped whole (and made anew, empty), with its roll-ups and its
        # feedback's.
        table = f"impressions_p{today:%Y%m%d}"
        before = await db.fetchval("SELECT $1::regclass::oid", table)
        assert await store.prune(today + timedelta(days=1)) == (30, 20)
        assert await db.fetchval("SELECT $1::regclass::oid", table) != before
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0
        assert await store.sums() == {} and await db.fetchval("SELECT count(*) FROM online_rollups") == 0

    run_db(settings, scenario)


def test_a_write_under_way_while_its_days_partition_is_made_lands_in_it(settings: Settings) -> None:
    """A replica's upkeep makes a day's partition while another one writes rows of that day: the write waits and
    lands in the new partition (it used to route them to the default partition and fail its new constraint)."""
    day = (datetime.now(UTC) + timedelta(days=10)).replace(hour=0, minute=0, second=0, microsecond=0)
    shown = Impression(uuid.uuid4(), 1, "v1", [1, 2], day + timedelta(hours=1))

    async def scenario(db: Database) -> None:
        store = OnlineStore(db, WINDOW)
        async with db.connection() as upkeep:
            making = upkeep.transaction()
            await making.start()
            await ensure_partition(upkeep, "impressions", day)  # attached, not yet committed
            writing = asyncio.create_task(store.add_impressions([shown]))
            await asyncio.sleep(0.5)
            assert not writing.done()  # waits for the partition
            await making.commit()
            await writing
        assert await db.fetchval(f"SELECT count(*) FROM impressions_p{day:%Y%m%d}") == 1
        assert await db.fetchval("SELECT count(*) FROM impressions_default") == 0

    run_db(settings, scenario)
