"""Online metrics as the service shows them: read from the online record (storage/feedback.py) in the background,
however often ModelInfo, ListModels and the dashboard ask.

The sums read the roll-ups (storage/feedback.py), whose cost follows the readers and buckets of the period rather
than its impressions; still, a request never waits for a refresh once a first answer is known: it gets the last
sums, and a refresh starts behind it when they are older than `fresh_seconds`, or than ten times the last refresh
took (PostgreSQL then spends at most a tenth of its time on them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from recommender.storage.db import DATABASE_ERRORS
from recommender.storage.feedback import OnlineStore
from recommender.storage.sums import OnlineSums
from recommender.tasks import cancelled

log = logging.getLogger(__name__)

FRESH_SECONDS = 5.0
LOAD_SHARE = 0.1  # of the time the refreshes may take
FORGET_SECONDS = 600.0  # sums nobody asked for since are dropped (a finished canary's period, say)

Key = tuple[datetime | None, tuple[str, ...]]


@dataclass(frozen=True)
class _Known:
    sums: dict[str, OnlineSums]
    at: float  # when it was read (monotonic)
    fresh_for: float  # seconds
    asked: float  # when it was last asked for


class OnlineView:
    def __init__(self, store: OnlineStore, fresh_seconds: float = FRESH_SECONDS) -> None:
        self.store = store
        self._fresh_seconds = fresh_seconds
        self._known: dict[Key, _Known] = {}
        self._refreshing: dict[Key, asyncio.Task[None]] = {}

    async def sums(self, since: datetime | None = None, versions: Sequence[str] = ()) -> dict[str, OnlineSums]:
        """Each version's sums since `since` (all impressions kept when None), of `versions` (all when empty).
        Raises the database's error only while no sums are known yet."""
        key: Key = (since, tuple(versions))
        now = time.monotonic()
        known = self._known.get(key)
        if known is None:
            return await self._read(key)
        self._known[key] = _Known(known.sums, known.at, known.fresh_for, now)
        if now - known.at >= known.fresh_for and key not in self._refreshing:
            self._refreshing[key] = asyncio.create_task(self._refresh(key))
        return known.sums

    async def close(self) -> None:
        for task in list(self._refreshing.values()):
            await cancelled(task)

    async def _read(self, key: Key) -> dict[str, OnlineSums]:
        started = time.monotonic()
        sums = await self.store.sums(*key)
        now = time.monotonic()
        fresh_for = max(self._fresh_seconds, (now - started) / LOAD_SHARE)
        self._known = {k: v for k, v in self._known.items() if now - v.asked < FORGET_SECONDS}
        self._known[key] = _Known(sums, now, fresh_for, now)
        return sums

    async def _refresh(self, key: Key) -> None:
        try:
            await self._read(key)
        except DATABASE_ERRORS as exc:  # the last sums stay, and are tried again when they would have aged
            log.warning("could not refresh the online metrics: %s", str(exc) or type(exc).__name__)
            known = self._known.get(key)
            if known is not None:
                self._known[key] = dataclasses.replace(known, at=time.monotonic())
        finally:
            self._refreshing.pop(key, None)
