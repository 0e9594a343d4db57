"""The one route from "retrain now" to a registered version, for a service's coordinator and for `recommender
train` alike: claim the cluster's retrain lock (one retrain at a time anywhere), run the trainer (in a child
process, forked by the fork server: training/child.py), tidy what a failed run left, release the lock; each step
once, on every path."""

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

# Removes what retrains that died or failed half-way left (training/trainer.py's `tidy` over the process's store).
Tidy = Callable[[], Awaitable[object]]

RELEASE_SECONDS = 5.0  # what releasing the lock may take (closing its connection frees it anyway)
TIDY_SECONDS = 5.0  # what the clean-up after a failure may take


@dataclass(frozen=True)
class RetrainRoute:
    dsn: str
    run: RetrainRunner
    tidy: Tidy

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
        return await self.holding(lock, control)

    async def holding(self, lock: RetrainLock, control: RetrainControl) -> RetrainResult:
        """The retrain under a claimed `lock`: run, tidy after a failure (a child killed half-way tidies
        nothing itself), release."""
        try:
            return await self.run(control)
        except Exception:
            await self.tidied()
            raise
        finally:
            await released(lock)

    async def clean_up(self) -> None:
        """What retrains that died half-way left, when no retrain runs anywhere (a service's start)."""
        lock = await self.claim(announce=False)
        if lock is None:
            return
        try:
            await self.tidied()
        finally:
            await released(lock)

    async def tidied(self) -> None:
        """`tidy`, boundedly; a failure is logged (the next retrain's start tidies again)."""
        try:
            async with asyncio.timeout(TIDY_SECONDS):
                await self.tidy()
        except Exception as exc:
            log.warning("could not clean up the artifacts folder: %s", str(exc) or type(exc).__name__)


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
