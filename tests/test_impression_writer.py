"""The impression writer (answers/queue.py) over an in-memory store: a batch goes out when it is full or its first
impression has waited FLUSH_SECONDS, whichever comes first, and a stop writes what is left."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import cast

import pytest

from recommender.answers import queue
from recommender.answers.queue import BATCH, ImpressionLog
from recommender.storage.feedback import Impression, OnlineStore


class Written:
    """What an OnlineStore was given: each batch of impressions, with when it came."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, list[Impression]]] = []
        self.arrived = asyncio.Event()

    async def add_impressions(self, impressions: Sequence[Impression]) -> None:
        self.batches.append((time.monotonic(), list(impressions)))
        self.arrived.set()

    async def first(self, seconds: float) -> None:
        """Until a batch has come (at most `seconds`)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.arrived.wait(), seconds)


def _impression(user: int) -> Impression:
    return Impression(uuid.uuid4(), user, "v1", [1, 2, 3], datetime.now(UTC))


def _log(written: Written, capacity: int = 10_000) -> ImpressionLog:
    return ImpressionLog(cast(OnlineStore, written), capacity=capacity)


def test_a_few_impressions_go_out_together_once_the_first_has_waited() -> None:
    async def run() -> tuple[Written, float]:
        written = Written()
        log = _log(written)
        log.start()
        first = time.monotonic()
        for user in range(3):
            log.record(_impression(user))
            await asyncio.sleep(0.05)  # later ones join the first one's batch
        await written.first(10 * queue.FLUSH_SECONDS)
        await log.stop()
        return written, first

    written, first = asyncio.run(run())
    assert [len(batch) for _at, batch in written.batches] == [3]
    assert written.batches[0][0] - first >= queue.FLUSH_SECONDS * 0.9


def test_a_full_batch_goes_out_without_waiting_and_a_stop_writes_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue, "FLUSH_SECONDS", 3600.0)  # only a full batch or the stop can write

    async def run() -> Written:
        written = Written()
        log = _log(written)
        log.start()
        for user in range(BATCH + 5):
            log.record(_impression(user))
        await written.first(30)
        assert [len(batch) for _at, batch in written.batches] == [BATCH]
        await log.stop()
        return written

    written = asyncio.run(run())
    assert [len(batch) for _at, batch in written.batches] == [BATCH, 5]
    users = [i.user_id for _at, batch in written.batches for i in batch]
    assert users == list(range(BATCH + 5))  # in the order shown, none twice


def test_a_full_queue_drops_new_impressions_and_counts_them() -> None:
    dropped: list[int] = []

    async def run() -> Written:
        written = Written()
        log = ImpressionLog(cast(OnlineStore, written), capacity=4, on_dropped=dropped.append)
        for user in range(6):  # not started: nothing takes from the queue
            log.record(_impression(user))
        await log.flush()
        return written

    written = asyncio.run(run())
    assert sum(dropped) == 2
    assert [i.user_id for _at, batch in written.batches for i in batch] == [0, 1, 2, 3]
