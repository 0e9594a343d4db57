"""Scheduled retraining: a tick per the schedule starts a retrain, unless one runs or too little data is new."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from recommender.schedule import Schedule
from recommender.serving.cluster import Cluster
from recommender.storage.db import DatabaseUnavailable

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self,
        schedule: Schedule,
        cluster: Cluster,
        new_interactions: Callable[[], Awaitable[int]],
        min_new_interactions: int = 0,
    ) -> None:
        self._schedule = schedule
        self._cluster = cluster
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
        if self._cluster.retraining:
            log.info("scheduled retrain skipped: a retrain is running")
            return
        if self._min_new:
            try:
                new = await self._new_interactions()
            except Exception as exc:
                log.warning("scheduled retrain skipped: cannot count new interactions (%s)", exc)
                return
            if new < self._min_new:
                log.info(
                    "scheduled retrain skipped: %d new interactions since the active version, %d needed",
                    new,
                    self._min_new,
                )
                return
        try:
            started = await self._cluster.start_retrain()
        except DatabaseUnavailable as exc:
            log.warning("scheduled retrain skipped: %s", exc)
            return
        if not started:
            log.info("scheduled retrain skipped: a retrain is running")
        else:
            log.info("scheduled retrain started")
