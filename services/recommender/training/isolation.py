"""Retraining in a child process, so that training never competes with serving for the interpreter.

The heavy part (snapshot, evaluation, tuning, fits, writing the artifact) runs in a process of its own at a lower
CPU priority with bounded threads; it reports its stages over a queue. The calling thread (the service's retrain
thread) then loads the artifact, records the version and hands it over to be warmed and swapped. Stopping the
service kills the child: a half-written artifact is ignored, as after any crash.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from typing import Any

from threadpoolctl import threadpool_limits

from recommender import logs
from recommender.model.training import TrainingCancelled
from recommender.training.progress import Progress, RetrainControl
from recommender.training.trainer import Candidate, RetrainResult, Trainer

log = logging.getLogger(__name__)

NICENESS = 10  # below serving's priority, where SCHED_IDLE is not available
POLL_SECONDS = 0.1


def _context() -> BaseContext:
    # A fork server: started fresh (never forked from the gRPC process and its threads), with the training code
    # imported once, so that each retrain's process starts in milliseconds.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["recommender.training.trainer"])
    return context


class TrainingFailed(RuntimeError):
    """The child process failed; the message is its exception's type and text."""


@dataclass(frozen=True)
class IsolatedTrainer:
    trainer: Trainer
    log_format: str = "text"

    def __call__(self, control: RetrainControl) -> RetrainResult:
        context = _context()
        messages: Any = context.Queue()
        child = context.Process(  # type: ignore[attr-defined]
            target=_prepare_in_child,
            args=(self.trainer, control.force, messages, self.log_format),
            name="recommender-train",
            daemon=True,
        )
        child.start()
        try:
            candidate = self._follow(child, messages, control)
        finally:
            if child.is_alive():
                child.kill()
            child.join()
            messages.close()
            messages.join_thread()
        return self.trainer.publish(candidate)

    def _follow(self, child: Any, messages: Any, control: RetrainControl) -> Candidate:
        """Relays the child's stages to `control` until it answers; kills it when the service stops."""
        while True:
            try:
                kind, payload = messages.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if control.should_stop():
                    child.kill()
                    raise TrainingCancelled("training cancelled") from None
                if not child.is_alive():
                    raise TrainingFailed(
                        f"the training process stopped unexpectedly (exit code {child.exitcode})"
                    ) from None
                continue
            if kind == "stage":
                control.stage(payload)
            elif kind == "done":
                candidate: Candidate = payload
                return candidate
            else:
                raise TrainingFailed(payload)


def _lower_priority() -> None:
    """SCHED_IDLE where Linux offers it: the child runs only on CPU time nothing else wants; nice 10 elsewhere."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(NICENESS)


def _prepare_in_child(trainer: Trainer, force: bool, messages: Any, log_format: str) -> None:
    logs.configure(log_format)
    _lower_priority()
    # Every thread pool (BLAS, OpenMP) as small as the training threads: serving keeps the other cores.
    threadpool_limits(trainer.params.als.threads)

    def report(progress: Progress) -> None:
        messages.put(("stage", progress.stage))

    try:
        # The parent's control logs and times the stages; this one only reports them.
        candidate = trainer.prepare(RetrainControl(force=force, on_progress=report, quiet=True))
        messages.put(("done", candidate))
    except Exception as exc:
        messages.put(("error", f"{type(exc).__name__}: {exc}"))
