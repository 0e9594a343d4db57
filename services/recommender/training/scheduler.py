"""Retraining by itself: the scheduler that starts a retrain at each tick of the schedule (recommender/schedule.py),
unless one runs or too little data is new."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from recommender.schedule import Schedule

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self,
        schedule: Schedule,
        start_retrain: Callable[[], Awaitable[bool]],
        busy: Callable[[], str | None],
        new_interactions: Callable[[], Awaitable[int]],
        min_new_interactions: int = 0,
    ) -> None:
        """`start_retrain` starts one (False when one runs in the cluster); `busy()` says why a tick must not
        start one now (a retrain runs, a canary is being judged), None when it may; `new_interactions` counts the
        (user, book) rows added or changed since the active version."""
        self._schedule = schedule
        self._start_retrain = start_retrain
        self._busy = busy
        self._new_interactions = new_interactions
        self._min_new = min_new_interactions
        self.next_tick: datetime | None = None

    async def run(self) -> None:
        """Ticks until cancelled; a tick never stacks on a running retrain."""
        while True:
            now = datetime.now(UTC)
            self.next_tick = self._schedule.next_after(now)
            await asyncio.sleep((self.next_tick - now).total_seconds())
            await self.tick()

    async def tick(self) -> None:
        why = self._busy()
        if why:
            log.info("scheduled retrain skipped: %s", why)
            return
        try:
            if self._min_new:
                new = await self._new_interactions()
                if new < self._min_new:
                    log.info(
                        "scheduled retrain skipped: %d new interactions since the active version, %d needed",
                        new,
                        self._min_new,
                    )
                    return
            started = await self._start_retrain()
        except Exception as exc:  # the database is away, most likely: the next tick tries again
            log.warning("scheduled retrain skipped: %s", str(exc) or type(exc).__name__)
            return
        log.info("scheduled retrain started" if started else "scheduled retrain skipped: a retrain is running")
