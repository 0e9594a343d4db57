"""This process among the others on the same database (replicas, workers, a `train` run beside them).

- Every process serves the registry's active version: a change notice makes it follow at once (through the version
  manager), and polling the registry every `poll_seconds` is the safety net for a missed notice.
- Every process knows when a retrain runs elsewhere, so that its Health says "retraining" too.
- Notices about new interactions and books go on to FreshData.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from recommender.serving.freshness import FreshData
from recommender.serving.versions import VersionManager
from recommender.storage.db import Database
from recommender.storage.events import Event, Kind, Listener
from recommender.storage.lock import retrain_running
from recommender.tasks import cancelled

log = logging.getLogger(__name__)

STOP_SECONDS = 2.0


class Cluster:
    def __init__(
        self,
        dsn: str,
        db: Database,
        versions: VersionManager,
        fresh: FreshData,
        retraining_here: Callable[[], bool] = lambda: False,
        poll_seconds: float = 2.0,
    ) -> None:
        self._db = db
        self._versions = versions
        self._fresh = fresh
        self._retraining_here = retraining_here
        self._poll_seconds = poll_seconds
        self._listener = Listener(dsn, self._on_event, self._on_reconnect)
        self._elsewhere = False  # a retrain runs in another process
        self._check = asyncio.Event()  # set: look at the registry and the retrain lock now
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def retraining(self) -> bool:
        """Whether a retrain runs here or anywhere else in the cluster."""
        return self._retraining_here() or self._elsewhere

    async def start(self) -> None:
        self._listener.start()
        self._task = asyncio.create_task(self._watch())
        try:  # a process that starts while a retrain runs elsewhere says so from its first answer
            async with asyncio.timeout(10):
                await self._listener.connected.wait()
                await self._refresh()
        except Exception as exc:
            log.warning("cannot look at the cluster yet: %s", str(exc) or type(exc).__name__)

    async def stop(self) -> None:
        self._stopping = True
        await cancelled(self._task, STOP_SECONDS)
        await self._listener.stop()

    async def _watch(self) -> None:
        while not self._stopping:  # the flag too: a cancellation some library swallows must not keep it looping
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_seconds):
                    await self._check.wait()
            self._check.clear()
            try:
                await self._refresh()
            except Exception as exc:  # the database may be away for a while: keep serving, try again
                log.warning("cannot check the active version: %s", str(exc) or type(exc).__name__)

    async def _refresh(self) -> None:
        running = await retrain_running(self._db)
        self._elsewhere = running and not self._retraining_here()
        version = await self._versions.follow()
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
