"""This process among the others on the same database (replicas, workers, a `train` run beside them).

- One retrain in the whole cluster at a time: the retrain lock in PostgreSQL (storage/db.py's RetrainLock), which a
  process that dies mid-retrain frees with its connection.
- Every process serves the registry's active version: a change notice makes it follow at once, and polling the
  registry every `poll_seconds` is the safety net for a missed notice.
- Every process knows when a retrain runs elsewhere, so that its Health says "retraining" too.
- Notices about new interactions and books go on to FreshData.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import Future

from recommender.serving.freshness import FreshData
from recommender.serving.manager import Busy, ModelManager
from recommender.serving.versions import Versions
from recommender.storage.db import Database, RetrainLock
from recommender.storage.events import Event, Kind, Listener

log = logging.getLogger(__name__)


class Cluster:
    def __init__(
        self,
        dsn: str,
        db: Database,
        manager: ModelManager,
        versions: Versions,
        fresh: FreshData,
        retrains: bool = True,
        poll_seconds: float = 2.0,
    ) -> None:
        """`retrains`: False for a serving worker, which leaves retrains to the main process."""
        self._dsn = dsn
        self._db = db
        self._manager = manager
        self._versions = versions
        self._fresh = fresh
        self._retrains = retrains
        self._poll_seconds = poll_seconds
        self._listener = Listener(dsn, self._on_event, self._on_reconnect)
        self._lock: RetrainLock | None = None  # held while this process retrains
        self._elsewhere = False  # a retrain runs in another process
        self._check = asyncio.Event()  # set: look at the registry and the retrain lock now
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def retraining(self) -> bool:
        """Whether a retrain runs here or anywhere else in the cluster."""
        return self._manager.state.running or self._elsewhere

    async def start(self) -> None:
        self._listener.start()
        self._tasks.append(asyncio.create_task(self._watch()))
        try:  # a process that starts while a retrain runs elsewhere says so from its first answer
            await asyncio.wait_for(self._listener.connected.wait(), 10)
            await self._refresh()
        except Exception as exc:
            log.warning("cannot look at the cluster yet: %s", str(exc) or type(exc).__name__)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)  # ended before the loop closes
        await self._listener.stop()
        await self._release()

    async def start_retrain(self, force: bool = False) -> bool:
        """Starts a retrain here; False when one runs here or anywhere else in the cluster."""
        if not self._retrains or self._manager.state.running:
            return False
        if self._lock is not None:  # the last retrain here has ended; the release it scheduled may not have run yet
            await self._release()
        lock = RetrainLock(self._dsn)
        if not await lock.acquire():
            self._elsewhere = True
            return False
        self._lock = lock
        future = self._manager.start_retrain(force)
        if future is None:
            await self._release()
            return False
        loop = asyncio.get_running_loop()

        def finished(_future: Future[None]) -> None:
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._release()))

        future.add_done_callback(finished)
        return True

    def check_not_busy(self) -> None:
        """Raises Busy while a retrain runs anywhere (a rollback must wait for it)."""
        if self.retraining:
            raise Busy("Retraining already in progress")

    async def _release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            try:
                await lock.release()
            except Exception as exc:  # closing the connection freed it anyway
                log.warning("releasing the retrain lock: %s", exc)

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check.wait(), self._poll_seconds)
            self._check.clear()
            try:
                await self._refresh()
            except Exception as exc:  # the database may be away for a while: keep serving, try again
                log.warning("cannot check the active version: %s", str(exc) or type(exc).__name__)

    async def _refresh(self) -> None:
        running = await self._db.retrain_running()
        self._elsewhere = running and self._lock is None
        try:
            with self._manager.exclusive():  # never while this process retrains or rolls back: it swaps itself
                version = await self._versions.follow(self._manager)
        except Busy:
            return
        if version is not None:
            log.info("following the registry: now serving version %s", version)

    def _on_event(self, event: Event) -> None:
        if event.kind in (Kind.VERSION, Kind.RETRAIN):
            self._check.set()
        else:
            self._fresh.on_event(event)

    def _on_reconnect(self) -> None:
        self._fresh.on_reconnect()
        self._check.set()
