"""The real gRPC service in this process (an event loop on a thread of its own), on an ephemeral port, with a
retrain run on a test's thread (the real trainer, or a stand-in that fails, waits or pauses)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import pytest

from bench.servers import SMALL_DEMO
from recommender.client import RecommenderClient
from recommender.model.dataset import Interaction
from recommender.model.hybrid import HybridModel
from recommender.serving.service import GrpcService
from recommender.settings import Settings
from recommender.storage.catalogue import CatalogueStore
from recommender.storage.db import Database
from recommender.training.config import make_trainer
from recommender.training.coordinator import RetrainState
from recommender.training.progress import RetrainControl
from recommender.training.route import RetrainRunner
from recommender.training.trainer import RetrainResult
from tests.support.waiting import wait_for

T = TypeVar("T")

# A retrain run on a thread of the test (the real trainer wrapped, or a stand-in that fails or waits).
ModelBuilder = Callable[[RetrainControl], RetrainResult]


def in_thread(build: ModelBuilder) -> RetrainRunner:
    async def run(control: RetrainControl) -> RetrainResult:
        return await asyncio.to_thread(build, control)

    return run


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


def start(loop: LoopThread, settings: Settings, build: ModelBuilder | None = None) -> RunningService:
    service = GrpcService(settings, settings.database_url or "", in_thread(build) if build else None)
    loop.run(service.start())
    return RunningService(service, RecommenderClient(f"127.0.0.1:{service.port}", max_attempts=2), loop)


def with_settings(settings: Settings, **changes: object) -> Settings:
    """`settings` with some changed, validated as from the environment (secrets become SecretStr)."""
    return Settings.model_validate({**settings.model_dump(), **changes})


def wait_until_idle(running: RunningService) -> None:
    wait_for(lambda: not running.retrain.running)


def trained(running: RunningService) -> RunningService:
    """Once its first model is trained and loaded."""
    wait_for(lambda: running.model is not None and not running.retrain.running)
    return running


def status_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The gRPC status `call` fails with."""
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details() or ""


def add_interactions(settings: Settings, rows: list[Interaction]) -> None:
    async def write() -> None:
        async with await Database.connect(settings.database_url or "") as db:
            await CatalogueStore(db).record_interactions(rows)

    asyncio.run(write())


def demo_sizes() -> dict[str, int]:
    """The test demo catalogue's sizes, as `demo.generate` takes them."""
    return {
        "num_books": SMALL_DEMO["demo_books"],
        "num_users": SMALL_DEMO["demo_users"],
        "num_interactions": SMALL_DEMO["demo_interactions"],
    }


def slowed(settings: Settings, seconds: float, calls: list[float] | None = None) -> ModelBuilder:
    """The real trainer, taking `seconds` longer, so that tests can act while it runs."""
    trainer = make_trainer(settings, settings.database_url or "")

    def build(control: RetrainControl) -> RetrainResult:
        if calls is not None:
            calls.append(time.monotonic())
        time.sleep(seconds)
        return trainer(control)

    return build


def paused_at(
    name: str, settings: Settings, pause: threading.Event, paused: threading.Event, go_on: threading.Event
) -> ModelBuilder:
    """The real trainer; once `pause` is set, it stops at the start of stage `name` until `go_on` is."""
    trainer = make_trainer(settings, settings.database_url or "")

    def build(control: RetrainControl) -> RetrainResult:
        original = control.stage

        def stage(stage_name: str) -> None:
            original(stage_name)
            if stage_name == name and pause.is_set():
                paused.set()
                go_on.wait(60)

        control.stage = stage  # type: ignore[method-assign,assignment]
        return trainer(control)

    return build
