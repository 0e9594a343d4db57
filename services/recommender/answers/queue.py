"""Impressions written off the request path: Recommend hands each answer to a bounded queue and never waits on
the database; a background task writes the queue in batches. A full queue (the database slower than the traffic,
or away) drops new impressions and counts them, rather than holding requests or memory. The process that trains
also rolls the record up every few seconds and deletes what is older than the retention once an hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from recommender.storage.feedback import Impression, OnlineStore

log = logging.getLogger(__name__)

BATCH = 1_000  # impressions per write
FLUSH_SECONDS = 0.5  # the longest an impression waits for its batch
PRUNE_SECONDS = 3600.0
ROLL_UP_SECONDS = 5.0
STOP_SECONDS = 2.0  # what a stop spends writing the last impressions
COMPLAIN_SECONDS = 60.0  # one warning a minute while writes fail


class ImpressionLog:
    def __init__(
        self,
        store: OnlineStore,
        capacity: int = 10_000,
        retention: timedelta | None = None,
        on_written: Callable[[int], None] = lambda count: None,
        on_dropped: Callable[[int], None] = lambda count: None,
    ) -> None:
        """`retention`: prune what is older (only the process that trains); `on_written(n)`, `on_dropped(n)`:
        for metrics."""
        self._store = store
        self._queue: asyncio.Queue[Impression] = asyncio.Queue(maxsize=capacity)
        self._retention = retention
        self._on_written = on_written
        self._on_dropped = on_dropped
        self._batch: list[Impression] = []  # taken from the queue, not written yet
        self._full = asyncio.Event()  # a batch's worth is waiting
        self._unwritten: dict[uuid.UUID, Impression] = {}  # queued or in a batch: what feedback may name already
        self._task: asyncio.Task[None] | None = None
        self._upkeep: asyncio.Task[None] | None = None
        self._complained = -COMPLAIN_SECONDS

    def record(self, impression: Impression) -> None:
        """Never waits: a full queue drops the impression (counted)."""
        try:
            self._queue.put_nowait(impression)
        except asyncio.QueueFull:
            self._on_dropped(1)
            return
        self._unwritten[impression.recommendation_id] = impression
        if self._waiting() >= BATCH:
            self._full.set()

    def unwritten(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Impression]:
        """Those of `ids` that this process showed and has not written yet."""
        return {i: self._unwritten[i] for i in ids if i in self._unwritten}

    def unwritten_pages(self, answer: uuid.UUID) -> list[Impression]:
        """The later pages of `answer` that this process showed and has not written yet."""
        return [i for i in self._unwritten.values() if i.continues == answer]

    def start(self) -> None:
        self._task = asyncio.create_task(self._write_forever())
        if self._retention is not None:
            self._upkeep = asyncio.create_task(self._upkeep_forever(self._retention))

    async def stop(self) -> None:
        """Writes what is queued (for at most STOP_SECONDS), then stops."""
        for task in (self._upkeep, self._task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception as exc:  # asyncpg may fail its own way when cancelled mid-query
                    log.warning("stopping the impression writer: %s", str(exc) or type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_SECONDS):
                await self.flush()
        left = self._waiting()
        if left:
            self._on_dropped(left)

    async def flush(self) -> None:
        """Writes what is queued now."""
        while self._batch or not self._queue.empty():
            await self._write(self._next_batch())

    async def _write_forever(self) -> None:
        """A batch at most FLUSH_SECONDS after its first impression, or as soon as it is full: the task wakes once
        per batch, not once per impression (a request's impression costs the event loop nothing more)."""
        while True:
            self._batch.append(await self._queue.get())
            if self._waiting() < BATCH:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FLUSH_SECONDS):
                        await self._full.wait()
            await self._write(self._next_batch())

    def _waiting(self) -> int:
        """Impressions not written yet: taken into the batch or still queued."""
        return len(self._batch) + self._queue.qsize()

    def _next_batch(self) -> list[Impression]:
        """The batch taken so far, filled from the queue up to BATCH; the next one starts empty."""
        batch, self._batch = self._batch + self._take(BATCH - len(self._batch)), []
        return batch

    def _take(self, most: int) -> list[Impression]:
        taken: list[Impression] = []
        while len(taken) < most and not self._queue.empty():
            taken.append(self._queue.get_nowait())
        return taken

    async def _write(self, batch: list[Impression]) -> None:
        try:
            await self._store.add_impressions(batch)
        except Exception as exc:  # the database away, or a commit cut off: these impressions are lost, counted
            self._forget(batch)
            self._on_dropped(len(batch))
            now = time.monotonic()
            if now - self._complained >= COMPLAIN_SECONDS:
                self._complained = now
                log.warning("impressions not written (dropped, counted in metrics): %s", exc)
            return
        self._forget(batch)
        self._on_written(len(batch))

    def _forget(self, batch: list[Impression]) -> None:
        for impression in batch:
            self._unwritten.pop(impression.recommendation_id, None)

    async def _upkeep_forever(self, retention: timedelta) -> None:
        """Rolls up the online record every ROLL_UP_SECONDS (so that no reader of the figures finds much to do),
        and prunes it once an hour."""
        pruned = -PRUNE_SECONDS
        while True:
            try:
                if time.monotonic() - pruned >= PRUNE_SECONDS:
                    pruned = time.monotonic()
                    impressions, feedback = await self._store.prune(datetime.now(UTC) - retention)
                    if impressions or feedback:
                        log.info(
                            "pruned %d impressions and %d feedback events older than %s",
                            impressions,
                            feedback,
                            retention,
                        )
                await self._store.roll_up()
            except Exception as exc:  # the database away (or going): tried again at the next tick
                log.warning("cannot keep the online record up yet: %s", str(exc) or type(exc).__name__)
            await asyncio.sleep(ROLL_UP_SECONDS)
