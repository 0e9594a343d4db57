"""Several server processes on one PostgreSQL: fresh data through the API, folded in on every replica before any
retrain; one retrain in the cluster at a time; every replica following promotions and rollbacks."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import httpx

from bench.ports import free_port
from bench.servers import ROOT, health_at, start_server
from recommender.serving.telemetry import TARGETS_FILE, read_targets
from recommender.settings import Settings
from recommender.storage import demo
from recommender.storage.catalogue import CatalogueStore
from recommender.storage.db import Database
from recommender.training.config import make_trainer
from recommender.training.progress import RetrainControl
from recommender.training.trainer import RetrainResult
from recommender.v1 import recommender_pb2 as pb
from tests.support.metrics import scraped
from tests.support.service import RunningService, StartService, demo_sizes, status_of
from tests.support.waiting import seconds_until, wait_for

FOLLOW_SECONDS = 2.0  # what the issue allows between a promotion on one replica and the others serving it


def genres_by_book(settings: Settings) -> dict[int, str]:
    return {b.book_id: b.genres[0] for b in demo.generate(settings.demo_seed, **demo_sizes()).books}


def interaction_count(settings: Settings) -> int:
    async def count() -> int:
        async with await Database.connect(settings.database_url or "") as db:
            return (await CatalogueStore(db).counts())["interactions"]

    return asyncio.run(count())


def test_a_batch_with_bad_entries_is_refused_whole_and_names_them(
    replicas: tuple[RunningService, RunningService], settings: Settings
) -> None:
    first, _second = replicas
    before = interaction_count(settings)
    code, message = status_of(
        lambda: first.client.record_interactions(
            [
                pb.InteractionInput(user_id=5, book_id=1, rating=4),
                pb.InteractionInput(user_id=5, book_id=999_999),
                pb.InteractionInput(user_id=0, book_id=2, rating=7),
            ]
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "interactions[2].user_id must be a positive integer" in message
    assert "interactions[2].rating must be between 0 and 5, got 7" in message
    assert "interactions[0]" not in message
    code, message = status_of(
        lambda: first.client.record_interactions(
            [pb.InteractionInput(user_id=5, book_id=1, rating=4), pb.InteractionInput(user_id=5, book_id=999_999)]
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message == "nothing written: interactions[1]: book 999999 is not in the catalogue"
    code, message = status_of(lambda: first.client.record_interactions([]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "1 to 1000 entries" in message
    too_many = [pb.InteractionInput(user_id=5, book_id=1)] * 1001
    assert status_of(lambda: first.client.record_interactions(too_many))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert interaction_count(settings) == before  # nothing of any refused batch was written


def test_interactions_written_on_one_replica_change_the_others_answers_before_a_retrain(
    replicas: tuple[RunningService, RunningService], settings: Settings
) -> None:
    first, second = replicas
    genres = genres_by_book(settings)
    version = second.client.model_info().version
    user = 1
    shown = [r.book_id for r in second.client.recommend(user_id=user, limit=10).recommendations]
    read = shown[:5]
    new_user = 888_001
    genre = genres[shown[0]]
    liked = [b for b, g in genres.items() if g == genre][:12]
    assert second.client.recommend(user_id=new_user, limit=5).strategy == "popular"

    written = first.client.record_interactions(
        [pb.InteractionInput(user_id=user, book_id=b, rating=5) for b in read]
        + [pb.InteractionInput(user_id=new_user, book_id=b, rating=5, timestamp=1_700_000_000) for b in liked]
    )
    assert written.recorded == len(read) + len(liked)

    def read_books_gone() -> bool:
        answer = second.client.recommend(user_id=user, limit=10)
        return not set(read) & {r.book_id for r in answer.recommendations}

    lag = seconds_until(read_books_gone, timeout=FOLLOW_SECONDS)
    print(f"fold-in visible on the other replica after {lag * 1000:.0f} ms")
    fresh = second.client.recommend(user_id=new_user, limit=5)
    assert fresh.strategy == "hybrid" and fresh.model_version == version  # folded in: no retrain happened
    ids = [r.book_id for r in fresh.recommendations]
    assert not set(liked) & set(ids)
    assert sum(genres[b] == genre for b in ids) >= 3, ids


def test_similar_books_share_the_genre_and_unknown_books_are_not_found(
    replicas: tuple[RunningService, RunningService], settings: Settings
) -> None:
    first, _second = replicas
    genres = genres_by_book(settings)
    for book_id in (1, 2, 3):
        answer = first.client.similar_books(book_id, limit=5)
        assert answer.book_id == book_id and len(answer.books) == 5
        assert book_id not in [b.book_id for b in answer.books]
        assert sum(genres[b.book_id] == genres[book_id] for b in answer.books) >= 3, answer
        scores = [b.score for b in answer.books]
        assert scores == sorted(scores, reverse=True)
    code, message = status_of(lambda: first.client.similar_books(999_999))
    assert code == grpc.StatusCode.NOT_FOUND and message == "book 999999 is not in the catalogue"
    assert status_of(lambda: first.client.similar_books(1, limit=0))[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_books_added_on_one_replica_get_content_scores_everywhere_at_once(
    replicas: tuple[RunningService, RunningService], settings: Settings
) -> None:
    first, second = replicas
    catalogue = demo.generate(settings.demo_seed, **demo_sizes()).books
    model = first.client.similar_books(catalogue[0].book_id, limit=1)
    template = catalogue[0]
    code, message = status_of(lambda: first.client.upsert_books([pb.BookInput(book_id=50_001)]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message == "nothing written: books[0]: book 50001 is not in the catalogue: a new book needs a title"
    genres = pb.BookInput().genres
    genres.extend(list(template.genres))
    added = first.client.upsert_books(
        [
            pb.BookInput(
                book_id=50_001, title="A new " + template.title, description=template.description, genres=genres
            ),
            pb.BookInput(book_id=template.book_id, authors="A. N. Editor"),  # only the authors change
        ]
    )
    assert (added.added, added.updated) == (1, 1)
    similar = first.client.similar_books(50_001, limit=5)  # this replica: at once
    assert similar.model_version == model.model_version
    by_id = {b.book_id: b for b in catalogue}
    assert sum(by_id[b.book_id].genres[0] == template.genres[0] for b in similar.books) >= 3, similar
    wait_for(lambda: _similar_or_none(second, 50_001) is not None, timeout=FOLLOW_SECONDS)
    edited = next(b for b in first.client.similar_books(50_001, limit=100).books if b.book_id == template.book_id)
    assert (edited.title, edited.authors) == (template.title, "A. N. Editor")


def _similar_or_none(running: RunningService, book_id: int) -> pb.SimilarBooksResponse | None:
    try:
        return running.client.similar_books(book_id, limit=3)
    except grpc.RpcError:
        return None


def test_one_retrain_in_the_cluster_and_every_replica_follows_promotions_and_rollbacks(
    start_service: StartService, settings: Settings
) -> None:
    second = start_service()  # trains the first version
    wait_for(lambda: second.model is not None and not second.retrain.running)
    release = threading.Event()
    trainer = make_trainer(settings, settings.database_url or "")

    def slow_retrain(control: RetrainControl) -> RetrainResult:
        release.wait(60)
        return trainer(control)

    first = start_service(build=slow_retrain)
    wait_for(lambda: first.model is not None)
    old = second.client.model_info().version
    assert first.client.retrain(force=True).status == "accepted"
    code, message = status_of(second.client.retrain)
    assert (code, message) == (grpc.StatusCode.ABORTED, "Retraining already in progress")
    wait_for(lambda: second.client.health().status == "retraining", timeout=FOLLOW_SECONDS)
    assert second.client.model_info().is_retraining
    assert status_of(lambda: second.client.rollback())[0] == grpc.StatusCode.ABORTED

    release.set()
    wait_for(lambda: not first.retrain.running, timeout=60)
    new = first.client.model_info().version
    assert new != old
    lag = seconds_until(lambda: second.client.model_info().version == new, timeout=FOLLOW_SECONDS)
    print(f"the other replica served the promoted version after {lag * 1000:.0f} ms")
    wait_for(lambda: second.client.health().status == "ok", timeout=FOLLOW_SECONDS)

    assert second.client.rollback().version == old
    lag = seconds_until(lambda: first.client.model_info().version == old, timeout=FOLLOW_SECONDS)
    print(f"the other replica followed the rollback after {lag * 1000:.0f} ms")


def test_killing_the_retraining_replica_frees_the_lock_and_versions_travel_through_the_database(
    start_service: StartService, settings: Settings, tmp_path: Path
) -> None:
    shared = settings.model_copy(update={"artifact_store": "postgres"})  # no shared folder between the replicas
    survivor = start_service(settings_=shared)
    wait_for(lambda: survivor.model is not None and not survivor.retrain.running)
    # A replica with an artifacts folder of its own: it can only get the version from the database.
    doomed = start_server(
        settings.database_url,
        tmp_path / "doomed",
        ARTIFACT_STORE="postgres",
        TUNING="auto",
        RETRAIN_TRIALS="10000",
        TUNING_SECONDS="60",
    )
    try:
        info = httpx.get(f"{doomed.url}/api/v1/model/info", timeout=10).json()
        assert info["version"] == survivor.client.model_info().version
        assert httpx.post(f"{doomed.url}/api/v1/retrain", timeout=10).status_code == 200
        wait_for(lambda: survivor.client.health().status == "retraining", timeout=FOLLOW_SECONDS)
        assert doomed.health() == {"status": "retraining", "models_loaded": True}
        conflict = status_of(survivor.client.retrain)
        assert conflict[0] == grpc.StatusCode.ABORTED
    finally:
        doomed.process.send_signal(signal.SIGKILL)
        doomed.process.wait(10)
    wait_for(lambda: survivor.client.health().status == "ok", timeout=5)
    assert survivor.client.retrain(force=True).status == "accepted"  # the lock went with the dead replica
    wait_for(lambda: not survivor.retrain.running, timeout=60)
    assert survivor.client.model_info().last_retrain.outcome == "promoted"


def served(running: RunningService, method: str) -> float:
    return float(running.service.metrics.requests.labels(method, "OK")._value.get())


def test_one_gateway_balances_every_call_over_the_replicas(
    replicas: tuple[RunningService, RunningService], tmp_path: Path
) -> None:
    first, second = replicas
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "recommender.cli",
        "gateway",
        "--http-port",
        str(port),
        "--data-dir",
        str(tmp_path),
    ]
    command += ["--upstream", first.target, "--upstream", second.target]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as gateway:
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: health_at(url) == {"status": "ok", "models_loaded": True}, timeout=30)
            before = served(first, "Recommend"), served(second, "Recommend")
            for user in range(1, 21):
                with httpx.Client(base_url=url, timeout=10) as http:  # a new connection each time
                    assert http.get(f"/api/v1/recommendations?user_id={user}&limit=3").status_code == 200
            assert served(first, "Recommend") > before[0] and served(second, "Recommend") > before[1]
            assert httpx.post(f"{url}/api/v1/retrain", timeout=10).status_code == 200  # either replica takes it
            conflict = httpx.post(f"{url}/api/v1/retrain", timeout=10)
            assert conflict.status_code == 409 and conflict.json() == {"detail": "Retraining already in progress"}
        finally:
            gateway.send_signal(signal.SIGTERM)
            assert gateway.wait(30) == 0, gateway.stderr.read() if gateway.stderr else ""


def test_train_beside_running_replicas_is_served_by_them_within_seconds(
    replicas: tuple[RunningService, RunningService], settings: Settings
) -> None:
    first, second = replicas
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url or "",
        "RECOMMENDER_ARTIFACTS_DIR": str(settings.artifacts_dir),
        "RECOMMENDER_TUNING": "off",
    }
    result = subprocess.run(
        [sys.executable, "train.py", "--force"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "running services switch to it within seconds" in result.stdout
    version = result.stdout.split("trained model version ", 1)[1].split(":", 1)[0]
    wait_for(lambda: {r.client.model_info().version for r in (first, second)} == {version}, timeout=FOLLOW_SECONDS)


def test_every_replica_answers_the_same_and_every_request_is_counted(
    replicas: tuple[RunningService, RunningService], settings: Settings
) -> None:
    first, second = replicas
    first.client.retrain(force=True)
    wait_for(lambda: not first.retrain.running, timeout=60)
    version = first.client.model_info().version
    wait_for(lambda: second.client.model_info().version == version, timeout=FOLLOW_SECONDS)
    one, other = first.client.model_info(), second.client.model_info()
    for field in ("version", "trained_at", "training_seconds", "metrics", "params", "last_retrain", "alpha"):
        assert getattr(one, field) == getattr(other, field), field
    assert one.last_retrain.outcome == "promoted" and one.last_retrain.version == version
    assert one.last_retrain_error == other.last_retrain_error == ""

    # Each replica has an endpoint of its own, both listed in the data folder's targets file.
    entries = [e for e in read_targets(settings.data_dir / TARGETS_FILE) if e["labels"]["pid"] == str(os.getpid())]
    addresses = [e["targets"][0] for e in entries]
    assert len(addresses) == 2
    sample = 'recommender_requests_total{code="OK",method="Recommend"}'
    before = sum(scraped(address, sample) for address in addresses)
    for user in range(1, 8):
        first.client.recommend(user_id=user, limit=3)
        second.client.recommend(user_id=user, limit=3)
    assert sum(scraped(address, sample) for address in addresses) == before + 14


def test_filters_hold_over_grpc_before_the_top_k(
    replicas: tuple[RunningService, RunningService], settings: Settings
) -> None:
    first, _second = replicas
    generated = demo.generate(settings.demo_seed, **demo_sizes())
    books = {b.book_id: b for b in generated.books}
    has = {i.book_id for i in generated.interactions if i.user_id == 3}
    genre = books[first.client.recommend(3, 1).recommendations[0].book_id].genres[0]
    answer = first.client.recommend(3, 20, genres=[genre.upper()], min_year=1950, max_year=2020)
    matching = [
        b.book_id
        for b in books.values()
        if genre in b.genres and 1950 <= (b.published_year or 0) <= 2020 and b.book_id not in has
    ]
    assert len(answer.recommendations) == min(20, len(matching))  # as many as match, up to the limit
    assert all(genre in books[b.book_id].genres for b in answer.recommendations)
    assert all(1950 <= (books[b.book_id].published_year or 0) <= 2020 for b in answer.recommendations)
    excluded = [b.book_id for b in answer.recommendations[:5]]
    again = first.client.recommend(3, 20, genres=[genre], min_year=1950, max_year=2020, exclude=excluded)
    assert not set(excluded) & {b.book_id for b in again.recommendations}
    assert [b.book_id for b in again.recommendations][: len(answer.recommendations) - 5] == [
        b.book_id for b in answer.recommendations[5:]
    ]
    capped = first.client.recommend(3, 20, max_per_author=1)
    authors = [books[b.book_id].authors.split(",")[0] for b in capped.recommendations]
    assert len(capped.recommendations) == 20 and len(set(authors)) == 20
    code, message = status_of(lambda: first.client.recommend(3, 10, exclude=[0], max_per_author=0))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        message
        == "exclude[0] must be a positive integer below 2^31, got 0; max_per_author must be between 1 and 100, got 0"
    )
