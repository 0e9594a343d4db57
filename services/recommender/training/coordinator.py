"""The retrain coordinator, only in processes that may train (Gorse's master, beside the serving node): the one
retrain route of training/route.py (claim the cluster's retrain lock, run the trainer in a child process, tidy
after a failure, release), run in the background, then the serving side told to follow what it promoted.

Whatever happens (a failed or cancelled retrain, a lost database), the lock, the in-process flag and the progress
are released, so that the next retrain works without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from recommender.model.fit import TrainingCancelled
from recommender.storage.lock import RetrainLock
from recommender.storage.registry import Outcome
from recommender.tasks import cancelled
from recommender.training.progress import Progress, RetrainControl
from recommender.training.route import RetrainRoute, released
from recommender.training.trainer import RetrainResult

log = logging.getLogger(__name__)

CANCELLED = "cancelled: the service is shutting down"
STOP_SECONDS = 11.0  # what a stop waits for a cancelled retrain's clean-up and the lock's release
# With no model to serve, a failed retrain is tried again after this, doubling up to the most (a database that was
# away, a full disk freed: the service recovers without anybody asking).
FIRST_RETRY_SECONDS = 10.0
MAX_RETRY_SECONDS = 600.0


class Served(Protocol):
    @property
    def version(self) -> str: ...


class Serving(Protocol):
    """What the coordinator needs of its process's serving side (serving/versions.py's VersionManager): to follow
    the registry once a retrain has published, and to say what serves."""

    @property
    def version(self) -> str | None: ...

    @property
    def canary(self) -> Served | None: ...

    async def follow(self) -> str | None: ...


@dataclass(frozen=True)
class RetrainState:
    running: bool
    last_error: str = ""  # empty when the last retrain here succeeded or none has run
    finished_at: datetime | None = None  # when the last retrain here ended
    progress: Progress | None = None  # while one runs


class RetrainCoordinator:
    def __init__(
        self,
        route: RetrainRoute,
        versions: Serving,
        on_change: Callable[[], None] = lambda: None,
        on_stage_done: Callable[[str, float], None] = lambda stage, seconds: None,
        on_finished: Callable[[RetrainResult], None] = lambda result: None,
    ) -> None:
        """`route`: how a retrain takes the cluster's lock and runs (training/route.py)."""
        self._route = route
        self._versions = versions
        self._on_change = on_change
        self._on_stage_done = on_stage_done
        self._on_finished = on_finished
        self._state = RetrainState(running=False)
        self._control: RetrainControl | None = None
        self._task: asyncio.Task[None] | None = None
        self._retry: asyncio.Task[None] | None = None
        self._failures_without_model = 0
        self._stopping = False

    @property
    def state(self) -> RetrainState:
        control = self._control
        if control is None:
            return self._state
        return RetrainState(True, self._state.last_error, self._state.finished_at, control.progress)

    @property
    def running(self) -> bool:
        return self._state.running

    async def start(self, force: bool = False) -> bool:
        """Starts a retrain in the background; False when one runs here or anywhere else in the cluster, or while
        stopping. Raises DatabaseUnavailable when the retrain lock cannot be asked for."""
        if self._stopping or self._state.running:
            return False
        lock = await self._route.claim()
        if lock is None:
            return False
        if self._stopping or self._state.running:  # changed while the lock was being taken
            await released(lock)
            return False
        control = RetrainControl(lambda: self._stopping, force, self._on_stage_done)
        self._state = RetrainState(True, self._state.last_error, self._state.finished_at)
        self._control = control
        self._task = asyncio.create_task(self._retrain(lock, control))
        self._on_change()
        return True

    async def clean_up(self) -> None:
        """Removes what retrains that died half-way left in the artifact store, when no retrain runs anywhere."""
        await self._route.clean_up()

    async def stop(self) -> None:
        """Kills a running retrain and waits (boundedly) for its lock to be released."""
        self._stopping = True
        await cancelled(self._retry)
        task = self._task
        if task is not None and not task.done():
            await cancelled(task, STOP_SECONDS)

    async def _retrain(self, lock: RetrainLock, control: RetrainControl) -> None:
        started = time.perf_counter()
        result: RetrainResult | None = None
        error = ""
        try:
            result = await self._route.holding(lock, control)
            if result.outcome in (Outcome.PROMOTED, Outcome.CANARY):
                control.stage("swapping")
                await self._versions.follow()
                canary = self._versions.canary
                served = self._versions.version if result.outcome is Outcome.PROMOTED else canary and canary.version
                if served != result.version:
                    error = f"version {result.version} ({result.outcome.value}) cannot be served here (see the log)"
            control.finish()
        except TrainingCancelled:
            error = CANCELLED
            log.info("retrain cancelled: the service is shutting down")
        except asyncio.CancelledError:
            error = CANCELLED
            log.info("retrain cancelled: the service is shutting down")
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            serving = "the previous model keeps serving" if self._versions.version else "no model serves yet"
            log.exception("retrain failed; %s", serving)
            result = RetrainResult(Outcome.FAILED, "", error, time.perf_counter() - started)
        finally:
            self._state = RetrainState(False, error, datetime.now(UTC))
            self._control = None
            if result is not None:
                self._on_finished(result)
            self._on_change()
            self._retry_without_model(bool(error) and error != CANCELLED)

    def _retry_without_model(self, failed: bool) -> None:
        """After a failed retrain while no model serves, another one later (with a growing wait)."""
        if self._versions.version is not None or not failed:
            self._failures_without_model = 0
            return
        if self._stopping:
            return
        delay = min(FIRST_RETRY_SECONDS * 2**self._failures_without_model, MAX_RETRY_SECONDS)
        self._failures_without_model += 1
        log.warning("no model serves yet: training again in %.0f s", delay)

        async def later() -> None:
            await asyncio.sleep(delay)
            try:
                await self.start()
            except Exception as exc:  # the database away: the next failure schedules the next try
                log.warning("could not start the retrain: %s", str(exc) or type(exc).__name__)
                self._retry_without_model(True)

        self._retry = asyncio.create_task(later())
