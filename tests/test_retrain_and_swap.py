"""The real gRPC service on an ephemeral port, with real PostgreSQL: retrain, hot swap, failures, bad input."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from recommender.client import RecommenderClient
from recommender.model.dataset import Interaction
from recommender.model.fit import TrainingCancelled
from recommender.settings import Settings
from recommender.storage import demo
from recommender.training.config import make_trainer
from recommender.training.progress import RetrainControl
from recommender.training.trainer import RetrainResult
from recommender.v1 import recommender_pb2 as pb
from recommender.v1 import recommender_pb2_grpc as pb_grpc
from tests.support.service import (
    RunningService,
    StartService,
    add_interactions,
    demo_sizes,
    slowed,
    status_of,
    wait_until_idle,
)
from tests.support.waiting import wait_for


def test_retrain_picks_up_new_interactions(trained_service: RunningService, settings: Settings) -> None:
    client = trained_service.client
    before_info = client.model_info()
    genres = {b.book_id: b.genres[0] for b in demo.generate(settings.demo_seed, **demo_sizes()).books}
    before = client.recommend(user_id=1, limit=10)
    assert before.strategy == "hybrid" and len(before.recommendations) == 10

    # User 1 turns into a keen reader of a genre absent from their recommendations; user 9001 is new.
    shown = {genres[r.book_id] for r in before.recommendations}
    new_genre = next(g for g in demo.GENRES if g not in shown)
    new_books = [book_id for book_id, genre in genres.items() if genre == new_genre][:15]
    add_interactions(
        settings,
        [Interaction(1, b, 5.0) for b in new_books] + [Interaction(9001, b, 4.0) for b in new_books[:3]],
    )

    assert client.retrain().status == "accepted"
    wait_until_idle(trained_service)
    after_info = client.model_info()
    assert after_info.version != before_info.version
    assert after_info.cf_model.num_users == before_info.cf_model.num_users + 1
    assert after_info.cf_model.matrix_nnz > before_info.cf_model.matrix_nnz
    assert after_info.last_retrain_error == ""

    after = client.recommend(user_id=1, limit=10)
    assert after.model_version == after_info.version
    recommended = [r.book_id for r in after.recommendations]
    assert not set(new_books) & set(recommended)  # now read, so never recommended again
    assert sum(genres[b] == new_genre for b in recommended) >= 3
    assert client.recommend(user_id=9001, limit=5).strategy == "hybrid"


def test_concurrent_retrains_run_exactly_once(start_service: StartService, settings: Settings) -> None:
    calls: list[float] = []
    running = start_service(slowed(settings, 0.5, calls))
    wait_until_idle(running)
    calls.clear()

    def retrain() -> str:
        try:
            return running.client.retrain().status
        except grpc.RpcError as error:
            return f"{error.code().name}: {error.details()}"

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: retrain(), range(6)))
    assert answers.count("accepted") == 1
    assert answers.count("ABORTED: Retraining already in progress") == 5
    assert running.client.health().status == "retraining"
    wait_until_idle(running)
    assert len(calls) == 1
    assert running.client.health().status == "ok"


def test_no_request_fails_during_a_retrain(start_service: StartService, settings: Settings) -> None:
    running = start_service(slowed(settings, 0.7))
    wait_until_idle(running)
    first_version = running.client.model_info().version
    errors: list[str] = []
    versions: set[str] = set()
    done = threading.Event()

    def hammer() -> None:
        with RecommenderClient(running.target) as client:
            while not done.is_set():
                try:
                    answer = client.recommend(user_id=7, limit=5)
                    versions.add(answer.model_version)
                    if len(answer.recommendations) != 5:
                        errors.append(f"{len(answer.recommendations)} books")
                except grpc.RpcError as error:
                    errors.append(f"{error.code()}: {error.details()}")

    loops = [threading.Thread(target=hammer) for _ in range(2)]
    for loop in loops:
        loop.start()
    running.client.retrain()
    wait_until_idle(running)
    time.sleep(0.2)
    done.set()
    for loop in loops:
        loop.join()
    assert errors == []
    assert first_version in versions and len(versions) == 2


@pytest.mark.parametrize("failure", ["training raises", "database unreachable"])
def test_a_failed_retrain_keeps_the_old_model(start_service: StartService, settings: Settings, failure: str) -> None:
    trainer = make_trainer(settings, settings.database_url or "")
    broken = make_trainer(settings, (settings.database_url or "").replace("/t_", "/missing_"))
    fail = threading.Event()

    def build(control: RetrainControl) -> RetrainResult:
        if not fail.is_set():
            return trainer(control)
        if failure == "training raises":
            raise RuntimeError("the fit blew up")
        return broken(control)

    running = start_service(build)
    wait_until_idle(running)
    version = running.client.model_info().version
    fail.set()
    running.client.retrain()
    wait_until_idle(running)

    info = running.client.model_info()
    assert info.version == version and info.status == "loaded"
    expected = "the fit blew up" if failure == "training raises" else "does not exist"
    assert expected in info.last_retrain_error
    assert running.client.health().status == "ok"
    assert len(running.client.recommend(user_id=3, limit=4).recommendations) == 4

    fail.clear()
    running.client.retrain()
    wait_until_idle(running)
    info = running.client.model_info()
    assert info.version != version and info.last_retrain_error == ""


def test_unavailable_until_the_first_model_is_trained(start_service: StartService, settings: Settings) -> None:
    release = threading.Event()
    trainer = make_trainer(settings, settings.database_url or "")

    def build(control: RetrainControl) -> RetrainResult:
        release.wait(30)
        return trainer(control)

    running = start_service(build)
    client = running.client
    assert status_of(lambda: client.recommend(user_id=1)) == (grpc.StatusCode.UNAVAILABLE, "Model not loaded")
    health = client.health()
    assert (health.status, health.models_loaded) == ("retraining", False)
    info = client.model_info()
    assert (info.status, info.is_retraining, info.alpha) == ("not_loaded", True, settings.alpha)
    assert _grpc_health(running.target) == "NOT_SERVING"

    release.set()
    wait_until_idle(running)
    assert client.health().models_loaded
    assert len(client.recommend(user_id=1).recommendations) == 10
    wait_for(lambda: _grpc_health(running.target) == "SERVING", timeout=5)


def _grpc_health(target: str) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="recommender.v1.Recommender"), timeout=5
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def test_start_up_skips_a_half_written_version(start_service: StartService, settings: Settings) -> None:
    first = start_service()
    wait_until_idle(first)
    good = first.client.model_info().version
    versions = settings.artifacts_dir / "versions"
    half = versions / "99990101T000000000000Z-ffffff"
    half.mkdir()
    (half / "cf.npz").write_bytes(b"\x00" * 10)  # written before the crash; no manifest yet
    (settings.artifacts_dir / ".incoming-99990101T000000000001Z-eeeeee").mkdir()

    second = start_service()
    assert second.model is not None
    assert second.client.model_info().version == good


@pytest.mark.parametrize(
    ("user_id", "limit", "message"),
    [
        (0, 5, "user_id is required: a positive integer"),
        (-1, 5, "user_id must be a positive integer, got -1"),
        (1, 0, "limit must be between 1 and 100, got 0"),
        (1, 101, "limit must be between 1 and 100, got 101"),
        (1, -3, "limit must be between 1 and 100, got -3"),
    ],
)
def test_bad_input_is_invalid_argument(trained_service: RunningService, user_id: int, limit: int, message: str) -> None:
    client = trained_service.client
    assert status_of(lambda: client.recommend(user_id=user_id, limit=limit)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
    )


def test_limit_defaults_to_ten_and_unknown_users_get_popular_books(trained_service: RunningService) -> None:
    client = trained_service.client
    assert len(client.recommend(user_id=1).recommendations) == 10
    unknown = client.recommend(user_id=123456, limit=100)
    assert unknown.strategy == "popular" and len(unknown.recommendations) == 100


def test_new_user_history_written_after_training_is_folded_in_at_once(
    trained_service: RunningService, settings: Settings
) -> None:
    books = demo.generate(settings.demo_seed, **demo_sizes()).books
    genre = books[0].genres[0]
    same_genre = [b.book_id for b in books if b.genres[0] == genre]
    before = trained_service.client.recommend(user_id=777_000, limit=5)
    add_interactions(settings, [Interaction(777_000, b, 5.0) for b in same_genre[:12]])
    answer = trained_service.client.recommend(user_id=777_000, limit=5)
    assert before.strategy == "popular"
    assert answer.strategy == "hybrid"  # CF factors folded in from the history, no retrain
    ids = [r.book_id for r in answer.recommendations]
    assert not set(same_genre[:12]) & set(ids)
    assert sum(b in same_genre for b in ids) >= 3, ids


def test_grpcurl_lists_and_calls_every_rpc_through_reflection(trained_service: RunningService) -> None:
    grpcurl = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
    assert grpcurl, "grpcurl is installed by the dev extras"

    def call(*args: str) -> str:
        result = subprocess.run([grpcurl, "-plaintext", *args], capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    target = trained_service.target
    assert "recommender.v1.Recommender" in call(target, "list").split()
    assert '"strategy": "hybrid"' in call(
        "-d", '{"user_id": 1, "limit": 2}', target, "recommender.v1.Recommender/Recommend"
    )
    assert '"status": "loaded"' in call(target, "recommender.v1.Recommender/ModelInfo")
    assert '"status": "ok"' in call(target, "recommender.v1.Recommender/Health")
    assert '"status": "accepted"' in call(target, "recommender.v1.Recommender/Retrain")


def test_stopping_the_service_cancels_a_running_retrain(start_service: StartService, settings: Settings) -> None:
    trainer = make_trainer(settings, settings.database_url or "")
    calls: list[int] = []

    def build(control: RetrainControl) -> RetrainResult:
        calls.append(1)
        if len(calls) == 1:
            return trainer(control)
        while not control.should_stop():  # a long training, checking in as ALS does after each iteration
            time.sleep(0.01)
        raise TrainingCancelled("training cancelled")

    running = start_service(build)
    wait_until_idle(running)
    running.client.retrain()
    started = time.monotonic()
    running.loop.run(running.service.stop(grace=1))
    assert time.monotonic() - started < 5
    assert running.retrain.last_error == "cancelled: the service is shutting down"


def test_a_damaged_active_version_is_marked_failed_and_start_up_serves_the_one_before(
    start_service: StartService, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    first = start_service()
    wait_until_idle(first)
    good = first.client.model_info().version
    first.client.retrain(force=True)
    wait_until_idle(first)
    damaged = first.client.model_info().version
    first.loop.run(first.service.stop(grace=1))
    cf = settings.artifacts_dir / "versions" / damaged / "cf.npz"
    cf.write_bytes(cf.read_bytes()[: cf.stat().st_size // 2])

    caplog.set_level(logging.WARNING)
    second = start_service()
    assert second.client.model_info().version == good
    statuses = {m.version: (m.status, m.reason) for m in second.client.list_models().models}
    assert statuses[good][0] == "active"
    assert statuses[damaged][0] == "failed" and "cf.npz does not match its checksum" in statuses[damaged][1]
    time.sleep(4.5)  # two polls of the registry: the damage is said once, not every 2 s
    assert sum("failed verification" in r.getMessage() for r in caplog.records) == 1
    assert status_of(lambda: second.client.rollback(damaged))[0] == grpc.StatusCode.FAILED_PRECONDITION


def test_right_after_a_retrain_nobody_is_newer_than_the_model(
    trained_service: RunningService, settings: Settings
) -> None:
    """The model's snapshot says exactly what it includes: a freshly trained one folds in nobody and re-encodes
    no book (before, everything written within a minute of the snapshot counted as newer)."""
    fresh = trained_service.service._fresh
    assert fresh is not None
    wait_for(lambda: fresh.stale_users == 0 and fresh.added_books == 0, timeout=10)
    add_interactions(settings, [Interaction(3, 7, 5.0)])
    wait_for(lambda: fresh.stale_users == 1, timeout=5)  # exactly the one who wrote
    trained_service.client.retrain()
    wait_until_idle(trained_service)
    wait_for(lambda: fresh.stale_users == 0, timeout=10)  # the new snapshot has them


def test_concurrent_calls_are_answered_in_batches_each_as_it_would_be_alone(
    start_service: StartService, settings: Settings
) -> None:
    running = start_service(settings_=settings.model_copy(update={"batch_wait_ms": 20.0}))
    wait_for(lambda: running.model is not None and not running.retrain.running)
    registry = running.service.metrics.registry
    users = [*range(1, 25), 123_456]  # known users and one the model does not have
    books = [*range(1, 25), 999_999]  # and one not in the catalogue

    def batched(method: str) -> bool:
        """Whether any batch of `method` so far held more than one call."""
        calls = registry.get_sample_value("recommender_batch_size_count", {"method": method}) or 0.0
        singles = registry.get_sample_value("recommender_batch_size_bucket", {"method": method, "le": "1.0"}) or 0.0
        return calls > singles

    async def main() -> None:
        async with grpc.aio.insecure_channel(running.target) as channel:
            stub = pb_grpc.RecommenderStub(channel)

            async def similar(book: int) -> pb.SimilarBooksResponse | grpc.StatusCode:
                try:
                    return await stub.SimilarBooks(pb.SimilarBooksRequest(book_id=book, limit=5))
                except grpc.aio.AioRpcError as error:
                    return error.code()

            async def recommend(user: int) -> pb.RecommendResponse:
                answer = await stub.Recommend(pb.RecommendRequest(user_id=user, limit=7))
                answer.ClearField("recommendation_id")  # each answer's own
                return answer

            alone = [await recommend(user) for user in users]
            similar_alone = [await similar(book) for book in books]
            assert similar_alone[-1] == grpc.StatusCode.NOT_FOUND
            for _round in range(30):  # calls sent together arrive together, usually in the first round
                assert list(await asyncio.gather(*(recommend(user) for user in users))) == alone
                assert list(await asyncio.gather(*(similar(book) for book in books))) == similar_alone
                if batched("Recommend") and batched("SimilarBooks"):
                    return

    asyncio.run(main())
    assert batched("Recommend") and batched("SimilarBooks")
