"""The serving core on its own, with in-memory stand-ins for PostgreSQL and the artifact store (tests/support/
fakes.py): the version manager's life cycle, fresh data, the retrain coordinator, the canary's judge and the
schedule. The same behaviours end to end, through the real database and Envoy, are in the other test files."""

from __future__ import annotations

import asyncio
import functools
import gc
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from recommender.answers.judge import CanaryJudge, CanaryPolicy
from recommender.answers.statistics import SequentialTest
from recommender.model.dataset import Book
from recommender.model.growth import with_books
from recommender.model.readers import reader_of
from recommender.model.recommend import recommend
from recommender.model.warm import warm
from recommender.schedule import Schedule
from recommender.serving.freshness import FreshData
from recommender.serving.policy import VersionUnavailable, serves_canary
from recommender.serving.versions import VersionManager, settle_memory
from recommender.storage.events import Event, Kind
from recommender.storage.registry import ActiveChanged, Outcome, Status, VersionRecord
from recommender.storage.sums import OnlineSums, Summed
from recommender.training.coordinator import RetrainCoordinator
from recommender.training.progress import RetrainControl
from recommender.training.scheduler import Scheduler
from recommender.training.trainer import RetrainResult, tidy
from tests.support.fakes import CannedSums, MemoryRegistry, MemoryRoute, MemoryStore, MemoryUsers, tiny_model

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def versions_of(*names: str, active: str, damaged: tuple[str, ...] = ()) -> VersionManager:
    registry, store = MemoryRegistry(), MemoryStore(damaged=set(damaged))
    for name in names:
        registry.add_version(name, Status.ACTIVE if name == active else Status.RETIRED)
        store.models[name] = tiny_model(name)
    return VersionManager(registry, store)


def fakes(manager: VersionManager) -> tuple[MemoryRegistry, MemoryStore]:
    """The in-memory registry and store behind a manager of `versions_of`."""
    registry, store = manager.registry, manager.store
    assert isinstance(registry, MemoryRegistry) and isinstance(store, MemoryStore)
    return registry, store


def served_version(manager: VersionManager, user_id: int) -> str:
    model = manager.model_for(user_id)
    assert model is not None
    return model.meta.version


def status(manager: VersionManager, version: str) -> Status:
    record = run(manager.registry.get(version))
    assert record is not None
    return record.status


# --- the version manager ---------------------------------------------------------------------------------------------


def test_start_up_serves_the_active_version_or_the_newest_retired_one_that_loads() -> None:
    manager = versions_of("v1", "v2", "v3", active="v3")
    assert run(manager.start()) is not None and manager.version == "v3"

    damaged = versions_of("v1", "v2", "v3", active="v3", damaged=("v3",))
    run(damaged.start())
    assert damaged.version == "v2"  # the most recently active retired version that loads
    assert status(damaged, "v3") is Status.FAILED and status(damaged, "v2") is Status.ACTIVE


def test_a_replaced_version_is_freed_by_its_references_alone() -> None:
    """A swap moves every live object out of the collector's reach for good (`settle_memory`): a version caught in
    a reference cycle would then never be freed."""
    model = tiny_model("v1")
    warm(model)  # every answer path once: the caches a serving version fills
    for user in model.cf.user_ids[:5].tolist():
        recommend(model, user, 5)
    gone = weakref.ref(model)
    try:
        settle_memory()
        del model
        assert gone() is None
    finally:
        gc.unfreeze()


def test_following_swaps_once_and_a_damaged_new_version_never_serves() -> None:
    manager = versions_of("v1", "v2", "v3", active="v1", damaged=("v3",))
    swaps: list[str] = []
    manager.subscribe(lambda model: swaps.append(model.meta.version))
    run(manager.start())
    run(manager.registry.activate("v2", "promoted elsewhere", replaces="v1"))
    assert run(manager.follow()) == "v2" and run(manager.follow()) is None
    run(manager.registry.activate("v3", "promoted elsewhere", replaces="v2"))
    assert run(manager.follow()) is None and manager.version == "v2"  # damaged: marked failed, v2 serves on
    assert status(manager, "v3") is Status.FAILED
    assert swaps == ["v1", "v2"]


def test_a_rollback_loads_before_it_writes_and_never_overrides_a_change_made_elsewhere() -> None:
    manager = versions_of("v1", "v2", "v3", active="v3", damaged=("v1",))
    run(manager.start())
    with pytest.raises(VersionUnavailable):
        run(manager.rollback("v1"))  # cannot load: the registry is untouched
    assert status(manager, "v3") is Status.ACTIVE and status(manager, "v1") is Status.FAILED
    run(manager.registry.activate("v2", "rolled back by another replica", replaces="v3"))
    with pytest.raises(ActiveChanged):
        run(manager.rollback("v3"))  # decided against v3 being active: it is not any more
    assert status(manager, "v2") is Status.ACTIVE and manager.version == "v3"  # nothing changed here either
    assert run(manager.follow()) == "v2"


def test_a_canary_serves_its_share_and_is_promoted_or_aborted_once() -> None:
    manager = versions_of("v1", "v2", active="v2")
    run(manager.start())
    run(manager.start_canary("v1", 0.5))
    served = {user: served_version(manager, user) for user in range(1, 2001)}
    assert {u for u, v in served.items() if v == "v1"} == {u for u in served if serves_canary(u, 0.5)}
    assert 850 < sum(v == "v1" for v in served.values()) < 1150
    assert run(manager.promote_canary("better", against="v2")) == "v1"
    assert manager.version == "v1" and manager.canary is None and status(manager, "v2") is Status.RETIRED
    run(manager.start_canary("v2", 0.1))
    with pytest.raises(ActiveChanged):
        run(manager.promote_canary("stale", against="v2"))  # judged against v2, but v1 is active
    assert run(manager.abort_canary("enough")) == "v2" and manager.canary is None


# --- fresh data ------------------------------------------------------------------------------------------------------


def test_only_users_named_by_notices_are_read_fresh_and_their_events_are_cached() -> None:
    model = tiny_model("v1")
    users = MemoryUsers()
    users.events[2] = [(1, 5.0), (11, 5.0)]

    async def scenario() -> None:
        fresh = FreshData(users, users)
        await fresh.start(model)
        assert await fresh.newer_events(model, 2) is None  # the model's record is current
        fresh.on_event(Event.about(Kind.INTERACTIONS, [2]))
        assert await fresh.newer_events(model, 2) == [(1, 5.0), (11, 5.0)]
        assert await fresh.newer_events(model, 2) == [(1, 5.0), (11, 5.0)]
        assert users.reads == [2]  # read once, then cached until the next notice names the user
        fresh.on_reconnect()  # notices may have been missed: everyone is read fresh
        await fresh.newer_events(model, 3)
        assert users.reads == [2, 3] and fresh.stale_users == -1
        await fresh.stop()

    run(scenario())


def test_books_changed_since_the_snapshot_join_the_served_catalogue() -> None:
    model = tiny_model("v1")
    users = MemoryUsers()
    users.changed_books = [Book(500, "Dragon lore", "C. Scribe", "dragon sword magic", ("fantasy",))]

    async def scenario() -> None:
        fresh = FreshData(users, users)
        await fresh.start(model)
        served = fresh.with_new_books(model)
        assert served.num_books == model.num_books + 1 and served.catalogue.position(500) is not None
        await fresh.stop()

    run(scenario())


def test_a_version_forgets_the_books_and_readers_erased_since_its_snapshot_before_it_serves() -> None:
    model = tiny_model("v1")
    users = MemoryUsers()
    users.erased_books, users.erased_users = [1], [7]  # book 1: read by user 1; user 7: a detectives reader

    async def scenario() -> None:
        fresh = FreshData(users, users)
        prepared = await fresh.prepared(model)
        position = model.catalogue.position(1)
        assert position in reader_of(model, 1).seen and position not in reader_of(prepared, 1).seen
        assert reader_of(prepared, 1).factors is not None  # folded in again from the rest of their history
        assert prepared.popularity[position] == 0 and prepared.rows.item_of_book[position] == -1
        because = {r.book_id for b in recommend(prepared, 1, 19).books for r in b.because}
        assert because and 1 not in because
        assert recommend(prepared, 7, 5).strategy == "popular" and len(reader_of(model, 7).seen) > 0
        assert recommend(prepared, 7, 5, events=[(12, 5.0)]).strategy != "popular"  # a history after the erasure
        cookbook = with_books(prepared, [Book(1, "A cookbook", "C. Cook", "recipes soup bread", ("cooking",))])
        assert cookbook.rows.item_of_book[cookbook.catalogue.position(1)] == -1  # starts anew: no factors
        await fresh.start(prepared)
        assert not fresh.facts(prepared).hides(5)
        fresh.on_event(Event.about(Kind.ERASED_BOOKS, [5]))
        assert fresh.facts(prepared).hides(5)  # at once, before the notice about its readers
        await fresh.stop()

    run(scenario())


# --- the retrain coordinator -----------------------------------------------------------------------------------------


def coordinator(
    outcome: Outcome | Exception, manager: VersionManager, route: list[MemoryRoute]
) -> tuple[RetrainCoordinator, asyncio.Event]:
    """A coordinator whose retrain takes 50 ms and ends as `outcome`; the event is set at each change of state."""

    async def train(control: RetrainControl) -> RetrainResult:
        await asyncio.sleep(0.05)
        if isinstance(outcome, Exception):
            await manager.store.save(tiny_model("half-written"))  # what a failed retrain leaves
            raise outcome
        registry, store = fakes(manager)
        store.models["v9"] = tiny_model("v9")
        await registry.add(VersionRecord("v9", Status.ACTIVE, reason="better"), replaces=manager.version)
        return RetrainResult(outcome, "v9", "better", 0.05)

    memory = MemoryRoute("memory://", train, functools.partial(tidy, manager.store, manager.registry))
    route.append(memory)
    changed = asyncio.Event()
    retrains = RetrainCoordinator(memory, manager, on_change=changed.set)
    return retrains, changed


async def finished(retrains: RetrainCoordinator, changed: asyncio.Event) -> None:
    while retrains.running:
        await changed.wait()
        changed.clear()


def test_one_retrain_at_a_time_and_a_promotion_is_served_when_it_ends() -> None:
    async def scenario() -> None:
        manager = versions_of("v1", active="v1")
        await manager.start()
        routes: list[MemoryRoute] = []
        retrains, changed = coordinator(Outcome.PROMOTED, manager, routes)
        assert await retrains.start() and retrains.running
        assert not await retrains.start()  # one at a time, here
        await finished(retrains, changed)
        assert manager.version == "v9" and not routes[0].held and retrains.state.last_error == ""
        routes[0].held = True  # a retrain elsewhere in the cluster holds the lock
        assert not await retrains.start()
        await retrains.stop()

    run(scenario())


def test_a_failed_retrain_releases_everything_says_why_and_cleans_up() -> None:
    async def scenario() -> None:
        manager = versions_of("v1", active="v1")
        await manager.start()
        routes: list[MemoryRoute] = []
        retrains, changed = coordinator(OSError("the disk is full"), manager, routes)
        assert await retrains.start()
        await finished(retrains, changed)
        assert retrains.state.last_error == "OSError: the disk is full"
        assert not routes[0].held and manager.version == "v1"
        assert fakes(manager)[1].removed == ["half-written"]
        await retrains.stop()

    run(scenario())


# --- the canary's judge ----------------------------------------------------------------------------------------------


def readers(n: int, hits: int) -> OnlineSums:
    """`n` readers with one impression each, `hits` of them with a click at rank 1."""
    return OnlineSums(n, n, n, Summed(hits, hits, hits), Summed(), Summed(hits, hits, hits))


@pytest.mark.parametrize(("canary_hits", "expected"), [(600, Status.ACTIVE), (100, Status.REJECTED)])
def test_the_judge_promotes_a_clearly_better_canary_and_aborts_a_worse_one(canary_hits: int, expected: Status) -> None:
    async def scenario() -> Status:
        manager = versions_of("v1", "v2", active="v2")
        await manager.start()
        await manager.start_canary("v1", 0.5)
        sums = CannedSums()
        sums.by_version = {"v1": readers(2000, canary_hits), "v2": readers(2000, 300)}
        judge = CanaryJudge(manager, sums, CanaryPolicy(automatic=True, test=SequentialTest()))
        await judge.look()
        record = await manager.registry.get("v1")
        assert record is not None
        return record.status

    assert run(scenario()) is expected


def test_a_judge_that_only_watches_decides_nothing() -> None:
    async def scenario() -> None:
        manager = versions_of("v1", "v2", active="v2")
        await manager.start()
        await manager.start_canary("v1", 0.5)
        sums = CannedSums()
        sums.by_version = {"v1": readers(2000, 600), "v2": readers(2000, 300)}
        judge = CanaryJudge(manager, sums, CanaryPolicy(automatic=False))
        comparison = await judge.look()
        assert comparison is not None and comparison.verdict.decision.value == "promote"
        assert manager.canary is not None and manager.version == "v2"

    run(scenario())


# --- the schedule ----------------------------------------------------------------------------------------------------


def test_a_tick_starts_a_retrain_unless_one_runs_or_too_little_is_new() -> None:
    started: list[bool] = []
    busy: list[str | None] = [None]
    new = [10]

    async def start() -> bool:
        started.append(True)
        return True

    async def count() -> int:
        return new[0]

    scheduler = Scheduler(Schedule.parse("1h"), start, lambda: busy[0], count, min_new_interactions=5)
    run(scheduler.tick())
    assert started == [True]
    busy[0] = "a retrain is running"
    run(scheduler.tick())
    busy[0], new[0] = None, 2
    run(scheduler.tick())
    assert started == [True]


def test_a_tick_survives_a_database_that_is_away() -> None:
    async def away() -> int:
        raise OSError("connection refused")

    async def start() -> bool:
        raise AssertionError("must not start")

    run(Scheduler(Schedule.parse("1h"), start, lambda: None, away, min_new_interactions=1).tick())
