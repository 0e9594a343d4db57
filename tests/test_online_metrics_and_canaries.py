"""Online truth through the service: impressions of every Recommend answer, feedback attributed to the version and
position that showed the book (by id, or a read within the attribution window), online metrics, and canaries (by
hand, sticky per user on every replica, and judged by the sequential test with RECOMMENDER_CANARY=auto). The
statistics themselves: tests/test_online_statistics.py."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import grpc
import pytest

from recommender.model.dataset import Book, Interaction
from recommender.settings import Settings
from recommender.storage.catalogue import CatalogueStore
from recommender.storage.db import Database
from recommender.storage.feedback import Feedback, Impression, OnlineStore
from recommender.storage.sums import OnlineSums, Summed
from recommender.v1 import recommender_pb2 as pb
from tests.support.service import RunningService, StartService
from tests.support.waiting import wait_for

T = TypeVar("T")


# --- the statistics ------------------------------------------------------------------------------------------------


# --- the record: impressions and their attribution -----------------------------------------------------------------


def run_db(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    async def go() -> T:
        async with await Database.connect(settings.database_url or "") as db:
            return await work(db)

    return asyncio.run(go())


def stored_impression(settings: Settings, recommendation_id: str) -> dict[str, object] | None:
    async def read(db: Database) -> dict[str, object] | None:
        row = await db.fetchrow("SELECT * FROM impressions WHERE recommendation_id = $1", uuid.UUID(recommendation_id))
        return dict(row) if row else None

    return run_db(settings, read)


def feedback_rows(settings: Settings) -> int:
    async def count(db: Database) -> int:
        return len(await db.fetch("SELECT 1 FROM feedback"))

    return run_db(settings, count)


def online_of(running: RunningService, version: str) -> pb.OnlineMetrics:
    models = {m.version: m for m in running.client.list_models().models}
    return models[version].online


def test_impressions_are_recorded_and_feedback_attributed_by_id_and_window(
    trained_service: RunningService, settings: Settings
) -> None:
    client = trained_service.client
    answer = client.recommend(4, 5)
    books = [b.book_id for b in answer.recommendations]
    wait_for(lambda: stored_impression(settings, answer.recommendation_id) is not None, timeout=10)
    row = stored_impression(settings, answer.recommendation_id)
    assert row is not None and row["user_id"] == 4 and row["books"] == books
    assert row["version"] == answer.model_version

    # A click on the second book names the answer; a read of the fourth (an interaction, no id) falls within the
    # window; a read of a book the answer did not show counts for nothing.
    click = pb.FeedbackEvent(recommendation_id=answer.recommendation_id, book_id=books[1], event="click")
    assert client.record_feedback([click]).recorded == 1
    shown_read = pb.InteractionInput(user_id=4, book_id=books[3], rating=5)
    other = next(b for b in range(1, 400) if b not in books)
    client.record_interactions([shown_read, pb.InteractionInput(user_id=4, book_id=other, rating=5)])
    online = online_of(trained_service, answer.model_version)
    assert (online.impressions, online.clicks, online.reads) == (1, 1, 1)
    assert online.mean_reciprocal_rank.value == 0.5  # the first hit: the click at rank 2
    assert online.click_through_rate.value == 1.0 and online.reads_per_1000.value == 1000.0
    info = client.model_info()
    assert info.online.impressions == 1 and info.online.since.seconds > 0


def test_a_read_outside_the_window_or_before_the_answer_counts_for_nothing(settings: Settings) -> None:
    async def scenario(db: Database) -> dict[str, OnlineSums]:
        store = OnlineStore(db, timedelta(hours=1))
        now = datetime.now(UTC)
        old, fresh = uuid.uuid4(), uuid.uuid4()
        await db.migrate()
        await CatalogueStore(db).import_data([Book(book_id=b, title=f"b{b}") for b in (1, 2, 3)], [])
        await store.add_impressions(
            [
                Impression(old, 7, "v1", [1, 2], now - timedelta(hours=3)),  # the read comes 3 h later: too late
                Impression(fresh, 8, "v1", [2, 3], now - timedelta(minutes=5)),  # read 10 minutes before it
            ]
        )
        await CatalogueStore(db).record_interactions(
            [
                Interaction(user_id=7, book_id=2, rating=5, timestamp=now.timestamp()),
                Interaction(user_id=8, book_id=3, rating=5, timestamp=(now - timedelta(minutes=15)).timestamp()),
            ]
        )
        sums = await store.sums()
        # Retention: what was shown before the cut goes (with its feedback), the rest stays.
        assert await store.prune(now - timedelta(hours=1)) == (1, 0)
        assert (await store.sums())["v1"].impressions == 1
        return sums

    sums = run_db(settings, scenario)
    assert set(sums) == {"v1"} and (sums["v1"].impressions, sums["v1"].users) == (2, 2)
    assert sums["v1"].clicks == sums["v1"].reads == sums["v1"].reciprocal_ranks == Summed()


def test_bad_feedback_names_every_entry_and_writes_nothing(trained_service: RunningService, settings: Settings) -> None:
    client = trained_service.client
    good = client.recommend(5, 3)
    shown = good.recommendations[0].book_id
    events = [
        pb.FeedbackEvent(recommendation_id=good.recommendation_id, book_id=shown, event="click"),
        pb.FeedbackEvent(recommendation_id="not-an-id", book_id=1, event="click"),
        pb.FeedbackEvent(recommendation_id=good.recommendation_id, book_id=0, event="like"),
        pb.FeedbackEvent(recommendation_id=good.recommendation_id, book_id=1, event="read", timestamp=10**13),
    ]
    with pytest.raises(grpc.RpcError) as failed:
        client.record_feedback(events)
    assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    detail = failed.value.details() or ""
    assert detail.startswith("nothing written: events[1].recommendation_id must be the recommendation_id")
    for part in ("events[2].book_id", "events[2].event must be one of click, read, dismiss", "events[3].timestamp"):
        assert part in detail
    assert "events[0]" not in detail and feedback_rows(settings) == 0
    with pytest.raises(grpc.RpcError) as empty:
        client.record_feedback([])
    assert empty.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    bad_read = pb.InteractionInput(user_id=5, book_id=1, recommendation_id="x")
    with pytest.raises(grpc.RpcError) as interaction:
        client.record_interactions([bad_read])
    assert "interactions[0].recommendation_id" in (interaction.value.details() or "")


def test_feedback_counts_only_for_the_reader_the_book_and_the_time_its_answer_was_shown(
    trained_service: RunningService, settings: Settings
) -> None:
    """Forged feedback: another reader's answer, a book it did not show, a date outside the window. Refused, naming
    why, when the answer is known (written, or queued by this process); stored but never counted when it is not yet
    (the sums apply the same rules), and nothing of an unknown answer counts."""
    client = trained_service.client
    eleven = client.recommend(11, 5)
    books = [b.book_id for b in eleven.recommendations]
    other = next(b for b in range(1, 400) if b not in books)

    def refused(call: Callable[[], object]) -> str:
        with pytest.raises(grpc.RpcError) as failed:
            call()
        assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        return failed.value.details() or ""

    rid = eleven.recommendation_id
    in_2001 = 978_307_200
    detail = refused(
        lambda: client.record_feedback(
            [
                pb.FeedbackEvent(recommendation_id=rid, book_id=books[0], event="click"),
                pb.FeedbackEvent(recommendation_id=rid, book_id=other, event="click"),
                pb.FeedbackEvent(recommendation_id=rid, book_id=books[1], event="read", timestamp=in_2001),
            ]
        )
    )  # at once: the answer is still in this process's queue, or written
    assert f"events[1]: book {other} was not in recommendation {rid}" in detail
    assert "events[2]: the event's time 2001-01-01T00:00:00+00:00 is not within the attribution window" in detail
    assert "events[0]" not in detail
    detail = refused(
        lambda: client.record_interactions([pb.InteractionInput(user_id=12, book_id=books[0], recommendation_id=rid)])
    )
    assert detail == f"nothing written: interactions[0]: recommendation {rid} was shown to another reader"
    assert feedback_rows(settings) == 0

    # An answer nobody was shown: stored (it may be another replica's, not written yet), never counted.
    unknown = str(uuid.uuid4())
    assert client.record_feedback([pb.FeedbackEvent(recommendation_id=unknown, book_id=books[0], event="click")])
    # The same rules in the sums, for events that arrived before their answer was written.
    wait_for(lambda: stored_impression(settings, rid) is not None, timeout=10)

    async def forge(db: Database) -> None:
        await OnlineStore(db, settings.attribution_window).add_feedback(
            [
                Feedback(uuid.UUID(rid), books[0], "click", datetime.now(UTC), user_id=12),
                Feedback(uuid.UUID(rid), books[1], "click", datetime.fromtimestamp(in_2001, UTC)),
                Feedback(uuid.UUID(rid), other, "click", datetime.now(UTC)),
            ]
        )

    run_db(settings, forge)
    assert (online_of(trained_service, eleven.model_version).clicks, feedback_rows(settings)) == (0, 4)
    assert client.record_feedback([pb.FeedbackEvent(recommendation_id=rid, book_id=books[2], event="click")])
    # The honest one (the figures refresh behind the answer: see OnlineView).
    wait_for(lambda: online_of(trained_service, eleven.model_version).clicks == 1, timeout=20, interval=0.5)


def test_impressions_can_be_turned_off(start_service: StartService, settings: Settings) -> None:
    running = start_service(settings_=settings.model_copy(update={"impressions": False}))
    wait_for(lambda: running.model is not None and not running.retrain.running)
    answer = running.client.recommend(3, 3)
    assert answer.recommendation_id  # still an id, so that clients need not care
    time.sleep(1.0)  # longer than the writer's batching
    assert stored_impression(settings, answer.recommendation_id) is None


# --- canaries --------------------------------------------------------------------------------------------------------


def two_versions(running: RunningService) -> tuple[str, str]:
    """The first version (retired) and a forced second one (active)."""
    first = running.client.model_info().version
    running.client.retrain(force=True)
    wait_for(lambda: not running.retrain.running and running.service.versions.version != first)
    return first, running.client.model_info().version


def versions_seen(running: RunningService, users: range) -> dict[int, str]:
    return {user: running.client.recommend(user, 1).model_version for user in users}


def test_a_canary_serves_a_sticky_share_on_every_replica(
    replicas: tuple[RunningService, RunningService],
) -> None:
    first, second = replicas
    old, new = two_versions(first)
    wait_for(lambda: second.service.versions.version == new, timeout=10)
    started = first.client.start_canary(old, 0.3)
    assert (started.status, started.version, started.share) == ("canary", old, pytest.approx(0.3))
    wait_for(lambda: second.service.versions.canary is not None, timeout=10)

    users = range(1, 1201)  # known and unknown readers alike
    here, there = versions_seen(first, users), versions_seen(second, users)
    assert here == there and set(here.values()) == {old, new}
    share = sum(v == old for v in here.values()) / len(users)
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / len(users))
    assert versions_seen(first, range(1, 50)) == {u: here[u] for u in range(1, 50)}  # sticky

    statuses = {m.version: (m.status, m.canary_share) for m in first.client.list_models().models}
    assert statuses[old] == ("canary", pytest.approx(0.3)) and statuses[new][0] == "active"
    info = second.client.model_info()
    assert info.canary.version == old and info.canary.share == pytest.approx(0.3) and not info.canary.automatic

    with pytest.raises(grpc.RpcError) as active:
        first.client.start_canary(new)
    assert active.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as missing:
        first.client.start_canary("20990101T000000Z")
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as share_bad:
        first.client.start_canary(old, 1.5)
    assert share_bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    assert first.client.abort_canary("enough").version == old
    wait_for(lambda: second.service.versions.canary is None, timeout=10)
    assert set(versions_seen(second, range(1, 200)).values()) == {new}
    assert status_of(first, old) == ("rejected", "aborted by hand: enough")
    with pytest.raises(grpc.RpcError) as none:
        first.client.promote_canary()
    assert none.value.code() is grpc.StatusCode.ABORTED


def test_promoting_a_canary_by_hand_makes_it_active_everywhere(
    replicas: tuple[RunningService, RunningService],
) -> None:
    first, second = replicas
    old, _ = two_versions(first)
    first.client.start_canary(old, 0.5)
    wait_for(lambda: second.service.versions.canary is not None, timeout=10)
    assert second.client.promote_canary().version == old  # any replica may decide
    wait_for(lambda: first.service.versions.version == old and first.service.versions.canary is None, timeout=10)
    assert set(versions_seen(first, range(1, 100)).values()) == {old}


def simulate_readers(running: RunningService, users: range, click_rate: dict[str, float], seed: int) -> None:
    """Readers who click the first book of an answer with a probability that depends on the version showing it."""
    rng = random.Random(seed)
    events = []
    for user in users:
        answer = running.client.recommend(user, 5)
        if answer.recommendations and rng.random() < click_rate.get(answer.model_version, 0.0):
            book = answer.recommendations[0].book_id
            events.append(pb.FeedbackEvent(recommendation_id=answer.recommendation_id, book_id=book, event="click"))
    for start in range(0, len(events), 1000):
        running.client.record_feedback(events[start : start + 1000], timeout=30)  # 1,000 rows: slow on a busy machine


def status_of(running: RunningService, version: str) -> tuple[str, str]:
    record = {m.version: m for m in running.client.list_models().models}[version]
    return record.status, record.reason


@pytest.fixture
def auto_canaries(start_service: StartService, settings: Settings) -> RunningService:
    running = start_service(
        settings_=settings.model_copy(
            update={"canary": "auto", "canary_share": 0.5, "canary_check_seconds": 0.3, "canary_max_impressions": 5000}
        )
    )
    wait_for(lambda: running.model is not None and not running.retrain.running)
    return running


def canary_after_retrain(running: RunningService) -> str:
    """A retrain that passes the gate: with RECOMMENDER_CANARY=auto, a canary for half the users."""
    active = running.service.versions.version
    running.client.retrain()
    wait_for(lambda: not running.retrain.running)
    canary = running.service.versions.canary
    assert canary is not None and running.service.versions.version == active
    assert canary.share == 0.5
    info = running.client.model_info()
    assert info.last_retrain.outcome == "canary" and info.canary.automatic
    return canary.version


def test_auto_mode_promotes_a_better_candidate_and_aborts_a_worse_one(auto_canaries: RunningService) -> None:
    running = auto_canaries
    first = running.service.versions.version
    assert first is not None
    better = canary_after_retrain(running)
    assert status_of(running, better)[0] == "canary"
    simulate_readers(running, range(1, 2001), {better: 0.5, first: 0.2}, seed=1)
    wait_for(lambda: running.service.versions.version == better, timeout=20)
    status, reason = status_of(running, better)
    assert status == "active" and reason.startswith("promoted by its online test: the canary's mean reciprocal rank")
    assert "likelihood ratio" in reason and status_of(running, first)[0] == "retired"

    worse = canary_after_retrain(running)
    simulate_readers(running, range(2001, 4001), {worse: 0.1, better: 0.4}, seed=2)
    wait_for(lambda: running.service.versions.canary is None, timeout=20)
    status, reason = status_of(running, worse)
    assert status == "rejected" and reason.startswith("aborted by its online test: the canary's mean reciprocal rank")
    assert running.service.versions.version == better
    history = running.client.online_history(bucket_minutes=1, hours=1)
    assert {series.version for series in history.versions} == {first, better, worse}
    assert all(point.impressions > 0 for series in history.versions for point in series.points)


def test_a_schedule_leaves_a_canary_to_its_test(
    start_service: StartService, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    update = {"canary": "auto", "retrain_schedule": "1s", "canary_check_seconds": 3600.0}
    running = start_service(settings_=settings.model_copy(update=update))
    wait_for(lambda: running.service.versions.canary is not None, timeout=60)  # the first tick after the first model
    canary = running.service.versions.canary
    assert canary is not None
    wait_for(lambda: f"scheduled retrain skipped: the canary {canary.version} is still being judged" in caplog.text)
    assert running.service.versions.canary == canary
