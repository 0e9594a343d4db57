"""The one live model handle, and the background retrain that replaces it.

Like TF Serving's availability-preserving policy: the new version is built, saved, loaded back and warmed while
the old one serves; then the handle is switched under the lock; the old model is dropped when no request holds it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from recommender.model.hybrid import HybridModel, warm
from recommender.model.training import TrainingCancelled

log = logging.getLogger(__name__)

# Builds a new model; it calls its argument now and then and stops early (raising) when that returns True.
ModelBuilder = Callable[[Callable[[], bool]], HybridModel]


@dataclass(frozen=True)
class RetrainState:
    running: bool
    last_error: str  # empty when the last retrain succeeded or none has run
    last_seconds: float  # wall time of the last finished retrain


class ModelManager:
    def __init__(
        self,
        model: HybridModel | None,
        build: ModelBuilder,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._lock = threading.RLock()
        self._model = model
        self._build = build
        self._on_change = on_change
        self._state = RetrainState(running=False, last_error="", last_seconds=0.0)
        self._stopping = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrain")

    @property
    def model(self) -> HybridModel | None:
        with self._lock:
            return self._model

    @property
    def state(self) -> RetrainState:
        with self._lock:
            return self._state

    def start_retrain(self) -> Future[None] | None:
        """Starts a retrain in the background; None when one is already running (or the manager is stopping)."""
        with self._lock:
            if self._state.running or self._stopping.is_set():
                return None
            self._state = RetrainState(True, self._state.last_error, self._state.last_seconds)
        self._on_change()
        return self._executor.submit(self._retrain)

    def _retrain(self) -> None:
        started = time.perf_counter()
        error = ""
        try:
            model = self._build(self._stopping.is_set)
            warm(model)  # before it takes traffic
            with self._lock:
                self._model = model
            log.info("now serving model version %s", model.meta.version)
        except TrainingCancelled:
            error = "cancelled: the service is shutting down"
            log.info("retrain cancelled: the service is shutting down")
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.exception("retrain failed; the previous model keeps serving")
        finally:
            with self._lock:
                self._state = RetrainState(False, error, time.perf_counter() - started)
            self._on_change()

    def shutdown(self) -> None:
        """Stops a running retrain at its next checkpoint and waits for it."""
        self._stopping.set()
        self._executor.shutdown(wait=True, cancel_futures=True)
