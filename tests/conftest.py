"""Fixtures: one real embedded PostgreSQL for the session, a fresh database per test that asks for one, and the
real gRPC service started in-process on an ephemeral port (helpers in tests/support/)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.servers import QUICK, SMALL_DEMO, Server, embedded_server
from recommender.settings import Settings, load_settings
from tests.support.database import Template, create_database, trained_template
from tests.support.service import LoopThread, ModelBuilder, RunningService, StartService, start, trained
from tests.support.waiting import wait_for


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with embedded_server(tmp_path_factory.mktemp("pg") / "data") as url:
        yield url


@pytest.fixture(scope="session")
def template(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Template:
    """A database with the test demo catalogue and its first model trained (QUICK settings), to copy."""
    return trained_template(postgres_url, tmp_path_factory.mktemp("template"), QUICK)


@pytest.fixture
def database_url(postgres_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new database; for a test that asks for a trained service, a copy of the trained template (its model's
    files in the test's artifacts folder), so that the service serves at once."""
    if {"trained_service", "replicas"} & set(request.fixturenames):
        template: Template = request.getfixturevalue("template")
        return template.copy(tmp_path)
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


@pytest.fixture
def start_service(settings: Settings) -> Iterator[StartService]:
    """Starts the real gRPC service; `build` replaces the trainer's child process (to make it fail, for example)."""
    started: list[RunningService] = []
    loop = LoopThread()

    def start_one(build: ModelBuilder | None = None, settings_: Settings | None = None) -> RunningService:
        running = start(loop, settings_ or settings, build)
        started.append(running)
        return running

    yield start_one
    for running in started:
        running.client.close()
        loop.run(running.service.stop(grace=1))
    loop.close()


@pytest.fixture
def trained_service(start_service: StartService) -> RunningService:
    """A service whose first model is trained and loaded."""
    return trained(start_service())


@pytest.fixture
def replicas(start_service: StartService) -> tuple[RunningService, RunningService]:
    """Two replicas of the service on one database; the first trained the model both serve."""
    first = trained(start_service())
    second = start_service()
    wait_for(lambda: second.model is not None)
    return first, second


@pytest.fixture(scope="module")
def server(template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real `python server.py` with the trained template's data, one per test module that asks for it."""
    with template.served(tmp_path_factory.mktemp("server")) as running:
        yield running


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    """A client of that server's JSON API through its Envoy."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client
