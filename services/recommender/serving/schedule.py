"""Retraining by itself: when (a cron expression like "0 3 * * *", or an interval like "6h", "30m", "90s", "1d"),
and the scheduler that starts a retrain at each tick, unless one runs or too little data is new."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import croniter

log = logging.getLogger(__name__)

_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Schedule:
    text: str

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """Raises ValueError saying what is accepted."""
        match = _INTERVAL.match(text)
        if match:
            if float(match[1]) <= 0:
                raise ValueError("an interval must be positive")
            return cls(text.strip())
        if croniter.is_valid(text):
            return cls(text.strip())
        raise ValueError('must be a cron expression like "0 3 * * *" or an interval like 6h, 30m, 90s or 1d')

    def next_after(self, moment: datetime) -> datetime:
        """The first tick after `moment` (an aware datetime): intervals count from `moment`."""
        match = _INTERVAL.match(self.text)
        if match:
            return moment + timedelta(seconds=float(match[1]) * _UNITS[match[2]])
        next_tick: datetime = croniter(self.text, moment).get_next(datetime)
        return next_tick


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
