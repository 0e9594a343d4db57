"""Every retrain a measured release: the registry, the promotion gate, force, rollback and listing over gRPC."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest

from recommender.settings import Settings
from recommender.storage.db import Database
from recommender.storage.registry import ActiveChanged
from tests.support.service import StartService, paused_at, slowed, status_of, wait_until_idle
from tests.support.waiting import wait_for


def crippled(settings: Settings) -> Settings:
    """One factor, one iteration, CF alone: clearly worse than the normal configuration."""
    return settings.model_copy(update={"als_factors": 1, "als_iterations": 1, "alpha": 1.0, "popularity_prior": 0.0})


def book_ids(answer: object) -> list[int]:
    return [r.book_id for r in answer.recommendations]  # type: ignore[attr-defined]


def test_gate_force_rollback_and_restart(start_service: StartService, settings: Settings) -> None:
    first = start_service()
    wait_until_idle(first)
    good = first.client.model_info()
    assert good.last_retrain.outcome == "promoted" and good.last_retrain.reason == "the first version"
    assert 0 < good.metrics.ndcg_at_10 <= 1 and good.params["factors"] == settings.als_factors
    good_answer = book_ids(first.client.recommend(user_id=3, limit=10))
    first.loop.run(first.service.stop(grace=1))

    # A restart with a crippled configuration: the registry's active version serves, and the gate holds.
    bad = start_service(settings_=crippled(settings))
    assert bad.client.model_info().version == good.version
    bad.client.retrain()
    wait_until_idle(bad)
    info = bad.client.model_info()
    assert info.version == good.version
    last = info.last_retrain
    assert last.outcome == "rejected" and last.version != good.version
    assert last.metrics_after.ndcg_at_10 < last.metrics_before.ndcg_at_10 - settings.gate_tolerance
    assert "below the active version's" in last.reason
    assert book_ids(bad.client.recommend(user_id=3, limit=10)) == good_answer

    # force promotes it anyway.
    bad.client.retrain(force=True)
    wait_until_idle(bad)
    forced = bad.client.model_info()
    assert forced.version != good.version and forced.last_retrain.outcome == "promoted"
    assert forced.last_retrain.reason.startswith("forced")
    assert book_ids(bad.client.recommend(user_id=3, limit=10)) != good_answer

    listed = {m.version: m for m in bad.client.list_models().models}
    assert [m.version for m in bad.client.list_models().models] == sorted(listed, reverse=True)  # newest first
    assert listed[good.version].status == "retired" and listed[forced.version].status == "active"
    assert listed[last.version].status == "rejected" and "below" in listed[last.version].reason
    assert listed[forced.version].params["factors"] == 1 and listed[forced.version].data_sizes.interactions > 0

    # Rollback without a version goes to the previously active one, at once.
    answer = bad.client.rollback()
    assert (answer.status, answer.version) == ("rolled_back", good.version)
    assert bad.client.model_info().version == good.version
    assert book_ids(bad.client.recommend(user_id=3, limit=10)) == good_answer
    bad.loop.run(bad.service.stop(grace=1))

    # The registry survives a restart, rollback included.
    again = start_service()
    assert again.client.model_info().version == good.version
    statuses = {m.version: m.status for m in again.client.list_models().models}
    assert statuses[good.version] == "active" and statuses[forced.version] == "retired"


def test_rollback_errors(start_service: StartService, settings: Settings) -> None:
    running = start_service(slowed(settings, 1.0))
    wait_until_idle(running)
    client = running.client
    assert status_of(lambda: client.rollback("no-such-version")) == (
        grpc.StatusCode.NOT_FOUND,
        "no model version 'no-such-version'; GET /api/v1/models lists them",
    )
    assert status_of(lambda: client.rollback()) == (grpc.StatusCode.NOT_FOUND, "no earlier version to roll back to")
    client.retrain()
    assert status_of(lambda: client.rollback()) == (grpc.StatusCode.ABORTED, "Retraining already in progress")
    wait_until_idle(running)


def test_a_rejected_version_cannot_be_rolled_back_to(start_service: StartService, settings: Settings) -> None:
    first = start_service()
    wait_until_idle(first)
    first.loop.run(first.service.stop(grace=1))
    bad = start_service(settings_=crippled(settings))
    bad.client.retrain()
    wait_until_idle(bad)
    rejected = bad.client.model_info().last_retrain.version
    code, message = status_of(lambda: bad.client.rollback(rejected))
    assert (code, message) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        f"version {rejected} was rejected: it has no model to serve",
    )


def test_tuning_chooses_and_stores_its_parameters(start_service: StartService, settings: Settings) -> None:
    tuned = settings.model_copy(update={"tuning": "auto", "tuning_trials": 4, "retrain_trials": 2, "alpha": "auto"})
    running = start_service(settings_=tuned)
    wait_for(lambda: running.model is not None and not running.retrain.running)
    info = running.client.model_info()
    stored = {m.version: m for m in running.client.list_models().models}[info.version]
    assert dict(stored.params) == dict(info.params)
    assert info.alpha == info.params["alpha"] and 0.0 <= info.alpha <= 1.0
    knobs = {"factors", "regularization", "iterations", "confidence", "rating_scale", "alpha", "popularity_prior"}
    assert set(info.params) >= knobs | {"cf_prior"}
    assert info.metrics.ndcg_at_10_cold > 0  # the cold slice is measured and stored
    # A retrain warm-starts from that choice: the active configuration is measured on the same split, tried first.
    running.client.retrain()
    wait_until_idle(running)
    last = running.client.model_info().last_retrain
    assert last.outcome == "promoted" and last.metrics_before.ndcg_at_10 > 0
    assert last.metrics_before.ndcg_at_10_cold > 0
    assert trials_recorded(settings) >= 4 + 2  # both searches' fits, where the next one starts


def trials_recorded(settings: Settings) -> int:
    async def count() -> int:
        async with await Database.connect(settings.database_url or "") as db:
            row = await db.fetchrow("SELECT count(*) AS n FROM tuning_trials")
            return int(row["n"]) if row else 0

    return asyncio.run(count())


@pytest.mark.parametrize("version", ["", "  "])
def test_blank_version_means_the_previous_one(start_service: StartService, version: str) -> None:
    running = start_service()
    wait_until_idle(running)
    first = running.client.model_info().version
    running.client.retrain()
    wait_until_idle(running)
    assert running.client.rollback(version).version == first


def test_a_change_of_the_active_version_during_a_retrain_stands_and_the_retrain_is_rejected(
    start_service: StartService, settings: Settings
) -> None:
    """Every change of the active version is a compare-and-set on the version it replaces: by hand, promotions and
    rollbacks wait for a running retrain (409); one made elsewhere meanwhile (here: straight in the registry, as
    another replica would) wins, and the retrain, gated against the version it replaced, is rejected."""
    pause, paused, go_on = threading.Event(), threading.Event(), threading.Event()
    running = start_service(paused_at("cf", settings, pause, paused, go_on))
    wait_until_idle(running)
    first = running.client.model_info().version
    running.client.retrain(force=True)
    wait_until_idle(running)
    second = running.client.model_info().version
    assert second != first

    pause.set()
    running.client.retrain()
    assert paused.wait(30)  # evaluated and gated against `second`, not yet released
    assert status_of(lambda: running.client.rollback(first)) == (
        grpc.StatusCode.ABORTED,
        "Retraining already in progress",
    )
    assert status_of(lambda: running.client.start_canary(first, 0.2))[0] is grpc.StatusCode.ABORTED
    assert status_of(lambda: running.client.promote_canary())[0] is grpc.StatusCode.ABORTED
    registry = running.service.versions.registry
    running.loop.run(registry.activate(first, "rolled back by another replica", replaces=second))
    with pytest.raises(ActiveChanged):  # a change decided against a version that is not active any more
        running.loop.run(registry.activate(second, "stale", replaces=second))
    go_on.set()
    wait_until_idle(running)
    info = running.client.model_info()
    assert info.version == first  # the rollback stands
    assert info.last_retrain.outcome == "rejected"
    assert info.last_retrain.reason.startswith(f"the active version changed from {second} to {first} during")
    statuses = {m.version: m.status for m in running.client.list_models().models}
    assert statuses[first] == "active" and statuses[info.last_retrain.version] == "rejected"
