"""The one route from "retrain now" to a registered version, for a service's coordinator and for `recommender
train` alike: the cluster's retrain lock (one retrain at a time anywhere), the trainer run (in a child process,
forked by the fork server: training/child.py), the lock released on every path."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from recommender.storage.lock import RetrainLock
from recommender.training.progress import RetrainControl
from recommender.training.trainer import RetrainResult

log = logging.getLogger(__name__)

# Runs one retrain to its end (artifact written, registry record added); cancelling it stops the training.
RetrainRunner = Callable[[RetrainControl], Awaitable[RetrainResult]]

RELEASE_SECONDS = 5.0  # what releasing the lock may take (closing its connection frees it anyway)


@dataclass(frozen=True)
class RetrainRoute:
    dsn: str
    run: RetrainRunner

    async def claim(self, announce: bool = True) -> RetrainLock | None:
        """The cluster's retrain lock, now; None when a retrain runs elsewhere. `announce`: every process hears
        that a retrain runs (their Health says so). Raises DatabaseUnavailable."""
        lock = RetrainLock(self.dsn)
        return lock if await lock.acquire(announce) else None

    async def __call__(self, control: RetrainControl) -> RetrainResult | None:
        """A whole retrain holding the lock (`recommender train`); None when one runs elsewhere."""
        lock = await self.claim()
        if lock is None:
            return None
        try:
            return await self.run(control)
        finally:
            await released(lock)


async def released(lock: RetrainLock) -> None:
    """Releases the lock, boundedly; a failure is logged (the connection's end frees it anyway)."""
    try:
        async with asyncio.timeout(RELEASE_SECONDS):
            await lock.release()
    except Exception as exc:
        log.warning("releasing the retrain lock: %s", str(exc) or type(exc).__name__)


@contextmanager
def fork_server() -> Iterator[None]:
    """The fork server retrains start from, while the block runs (`recommender train`; a service keeps its own for
    its life)."""
    from recommender.training.child import start_fork_server, stop_fork_server

    start_fork_server()
    try:
        yield
    finally:
        stop_fork_server()
