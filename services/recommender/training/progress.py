"""How far a retrain is: named stages with a percentage, each stage's duration logged and reported."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

log = logging.getLogger("recommender.training")

# The stages of a retrain, in order, with the percentage reached when each starts.
STAGES = {"loading": 0, "content": 10, "evaluating": 20, "cf": 70, "saving": 90, "swapping": 95}


@dataclass(frozen=True)
class Progress:
    stage: str
    percent: float
    started_at: datetime  # when the retrain started


class RetrainControl:
    """What a retrain gets from whoever runs it: when to stop, whether to skip the gate, where to report."""

    def __init__(
        self,
        should_stop: Callable[[], bool] = lambda: False,
        force: bool = False,
        on_stage_done: Callable[[str, float], None] = lambda stage, seconds: None,
        on_progress: Callable[[Progress], None] = lambda progress: None,
        quiet: bool = False,
    ) -> None:
        self.should_stop = should_stop
        self._quiet = quiet  # report stages without logging them (another process logs them)
        self.force = force
        self._on_stage_done = on_stage_done
        self._on_progress = on_progress
        self._lock = threading.Lock()
        self._progress = Progress("starting", 0.0, datetime.now(UTC))
        self._stage_started = time.perf_counter()

    @property
    def progress(self) -> Progress:
        with self._lock:
            return self._progress

    def stage(self, name: str) -> None:
        """Ends the current stage (logging its duration) and starts `name`."""
        self._end_stage()
        with self._lock:
            self._progress = Progress(name, float(STAGES[name]), self._progress.started_at)
            self._stage_started = time.perf_counter()
        self._on_progress(self._progress)

    def finish(self) -> None:
        self._end_stage()
        with self._lock:
            self._progress = Progress("done", 100.0, self._progress.started_at)
        self._on_progress(self._progress)

    def _end_stage(self) -> None:
        with self._lock:
            stage, seconds = self._progress.stage, time.perf_counter() - self._stage_started
        if stage in STAGES and not self._quiet:
            log.info("retrain stage %s took %.2f s", stage, seconds)
            self._on_stage_done(stage, seconds)
