"""Retraining in a child process, so that training never competes with serving for the interpreter.

The whole retrain (training/trainer.py, up to the registry record) runs in a process of its own, forked by a fork
server (started fresh, never forked from the gRPC process and its threads, with the training code imported once,
so that each retrain starts in milliseconds), at the lowest CPU priority and with bounded threads. It reports its
stages through a pipe. Stopping the service kills it, and so does the service's death: the fork server and each
retrain carry a parent-death signal. What a killed retrain half-wrote, the next one removes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass
from multiprocessing import forkserver, resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any

from threadpoolctl import threadpool_limits

from recommender import logs
from recommender.model.fit import TrainingCancelled
from recommender.processes import die_with_parent_now
from recommender.training.progress import Progress, RetrainControl
from recommender.training.trainer import RetrainResult, Trainer

log = logging.getLogger(__name__)

NICENESS = 10  # below serving's priority, where SCHED_IDLE is not available
POLL_SECONDS = 0.05
PRELOAD = "recommender.training.forkserver_preload"


class TrainingFailed(RuntimeError):
    """The child process failed; the message is its exception's type and text."""


def _context() -> BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([PRELOAD])
    return context


def start_fork_server() -> None:
    """Starts the fork server now, from this thread: it dies with this thread, so call it from the one that lives
    as long as the service (the event loop's)."""
    _context()
    forkserver.ensure_running()


def stop_fork_server() -> None:
    """Ends the fork server and its resource tracker at once, when the command ends: left alone they outlive it
    by a few seconds when the fork server is still importing."""
    # multiprocessing offers no public way to stop them; these are the methods its own tests use.
    server: Any = forkserver._forkserver
    if server._forkserver_pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server._forkserver_pid, signal.SIGKILL)
        server._stop()
    tracker: Any = resource_tracker._resource_tracker
    tracker._stop()


@dataclass(frozen=True)
class ChildProcessTrainer:
    """`await ChildProcessTrainer(trainer)(control)`: the retrain in a child process; cancelling it kills the child."""

    trainer: Trainer
    log_format: str = "text"

    async def __call__(self, control: RetrainControl) -> RetrainResult:
        # Started at the first retrain, from the event loop's thread (the fork server dies with the thread that
        # started it, so it must be the one that lives as long as the service): a service that never retrains
        # never pays for it.
        start_fork_server()
        context = _context()
        receive, send = context.Pipe(duplex=False)
        child = context.Process(  # type: ignore[attr-defined]
            target=_run_in_child,
            args=(self.trainer, control.force, send, self.log_format),
            name="recommender-train",
            daemon=True,
        )
        # The first start waits for the fork server's imports: off the event loop.
        starting = asyncio.ensure_future(asyncio.to_thread(child.start))
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            await starting  # a cancelled start must not leave a child running on its own
            _end(child)
            raise
        finally:
            send.close()
        try:
            return await _follow(child, receive, control)
        finally:
            _end(child)
            receive.close()


async def _follow(child: Any, receive: Connection, control: RetrainControl) -> RetrainResult:
    """Relays the child's stages to `control` until it answers."""
    while True:
        if receive.poll():
            try:
                kind, payload = receive.recv()
            except EOFError:
                raise TrainingFailed(_stopped(child)) from None
            if kind == "stage":
                control.stage(payload)
            elif kind == "done":
                result: RetrainResult = payload
                return result
            else:
                raise TrainingFailed(payload)
        elif not child.is_alive() and not receive.poll():
            raise TrainingFailed(_stopped(child))
        elif control.should_stop():
            raise TrainingCancelled("training cancelled")
        else:
            await asyncio.sleep(POLL_SECONDS)


def _stopped(child: Any) -> str:
    child.join(1)
    return f"the training process stopped unexpectedly (exit code {child.exitcode})"


def _end(child: Any) -> None:
    if child.is_alive():
        child.kill()
    child.join(5)


def _lower_priority() -> None:
    """SCHED_IDLE where Linux offers it: the child runs only on CPU time nothing else wants; nice 10 elsewhere."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(NICENESS)


def _run_in_child(trainer: Trainer, force: bool, send: Connection, log_format: str) -> None:
    preload = sys.modules.get(PRELOAD)
    die_with_parent_now(getattr(preload, "FORK_SERVER_PID", None))
    logs.configure(log_format)
    _lower_priority()
    # Every thread pool (BLAS, OpenMP) as small as the training threads: serving keeps the other cores.
    threadpool_limits(trainer.params.als.threads)

    def report(progress: Progress) -> None:
        send.send(("stage", progress.stage))

    try:
        # The parent's control logs and times the stages; this one only reports them.
        result = trainer(RetrainControl(force=force, on_progress=report, quiet=True))
        send.send(("done", result))
    except Exception as exc:
        send.send(("error", f"{type(exc).__name__}: {exc}"))
