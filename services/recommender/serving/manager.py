"""The one live model handle, and the background retrain that replaces it.

Like TF Serving's availability-preserving policy: the new version is built, saved, loaded back and warmed while
the old one serves; then the handle is switched under the lock; the old model is dropped when no request holds it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from recommender.model.hybrid import HybridModel, warm
from recommender.model.training import TrainingCancelled
from recommender.training.progress import Progress, RetrainControl
from recommender.training.trainer import Outcome, RetrainResult

log = logging.getLogger(__name__)

# Builds a new version: told when to stop early (it raises then), whether to skip the promotion gate, and where to
# report its stages.
ModelBuilder = Callable[[RetrainControl], RetrainResult]


@dataclass(frozen=True)
class RetrainState:
    running: bool
    last_error: str  # empty when the last retrain succeeded or none has run
    last: RetrainResult | None = None  # what the last retrain did
    progress: Progress | None = None  # while one runs


class Busy(Exception):
    """A retrain (or a rollback) is running."""


class ModelManager:
    def __init__(
        self,
        model: HybridModel | None,
        build: ModelBuilder,
        on_change: Callable[[], None] = lambda: None,
        on_stage_done: Callable[[str, float], None] = lambda stage, seconds: None,
        on_finished: Callable[[RetrainResult], None] = lambda result: None,
    ) -> None:
        self._lock = threading.RLock()
        self._model = model
        self._build = build
        self._on_change = on_change
        self._on_stage_done = on_stage_done
        self._on_finished = on_finished
        self._control: RetrainControl | None = None
        self._state = RetrainState(running=False, last_error="")
        self._exclusive = threading.Lock()  # held by a retrain or a rollback: one at a time
        self._stopping = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrain")

    @property
    def model(self) -> HybridModel | None:
        with self._lock:
            return self._model

    @property
    def state(self) -> RetrainState:
        with self._lock:
            control = self._control
            return dataclasses.replace(self._state, progress=control.progress if control else None)

    def start_retrain(self, force: bool = False) -> Future[None] | None:
        """Starts a retrain in the background; None when one (or a rollback) is running, or when stopping."""
        if self._stopping.is_set() or not self._exclusive.acquire(blocking=False):
            return None
        with self._lock:
            self._state = RetrainState(True, self._state.last_error, self._state.last)
            self._control = RetrainControl(self._stopping.is_set, force, self._on_stage_done)
        self._on_change()
        return self._executor.submit(self._retrain, self._control)

    def swap(self, model: HybridModel) -> None:
        """Serves `model` from now on; it must be warm."""
        with self._lock:
            self._model = model
        log.info("now serving model version %s", model.meta.version)
        self._on_change()

    def exclusive(self) -> _Exclusive:
        """`with manager.exclusive():` for a change of version outside a retrain; raises Busy while one runs."""
        return _Exclusive(self._exclusive)

    def _retrain(self, control: RetrainControl) -> None:
        started = time.perf_counter()
        error, result = "", None
        try:
            result = self._build(control)
            if result.model is not None:
                control.stage("swapping")
                warm(result.model)  # before it takes traffic
                self.swap(result.model)
            control.finish()
        except TrainingCancelled:
            error = "cancelled: the service is shutting down"
            log.info("retrain cancelled: the service is shutting down")
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.exception("retrain failed; the previous model keeps serving")
            result = RetrainResult(Outcome.FAILED, "", error, time.perf_counter() - started)
        finally:
            with self._lock:
                last = result or self._state.last
                self._state = RetrainState(False, error, last)
                self._control = None
            self._exclusive.release()
            if result is not None:
                self._on_finished(result)
            self._on_change()

    def shutdown(self) -> None:
        """Stops a running retrain at its next checkpoint and waits for it."""
        self._stopping.set()
        self._executor.shutdown(wait=True, cancel_futures=True)


class _Exclusive:
    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            raise Busy("Retraining already in progress")

    def __exit__(self, *_: object) -> None:
        self._lock.release()
