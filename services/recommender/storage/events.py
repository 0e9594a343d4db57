"""Change notices between server processes: PostgreSQL's LISTEN/NOTIFY on one channel.

A notice is sent inside the transaction that makes the change, so it arrives when (and only if) the change
commits. Notices can be missed (a listener reconnecting): listeners treat a reconnect as "anything may have
changed", and the registry is polled as well.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

import asyncpg

from recommender.tasks import cancelled

log = logging.getLogger(__name__)

CHANNEL = "recommender_events"
# PostgreSQL refuses payloads of 8,000 bytes or more; a notice about more ids than this says "all" instead.
MAX_IDS = 500


class Kind(StrEnum):
    INTERACTIONS = "interactions"  # ids: the users whose history changed (empty: any user may have)
    BOOKS = "books"  # ids: the books added or changed (empty: any book may have)
    ERASED_BOOKS = "erased_books"  # ids: books erased (sent before the notice about their readers' histories)
    VERSION = "version"  # the active version changed (a promotion or a rollback)
    RETRAIN = "retrain"  # a retrain started or ended somewhere


@dataclass(frozen=True)
class Event:
    kind: Kind
    ids: tuple[int, ...] = field(default=())

    def encode(self) -> str:
        return json.dumps({"kind": self.kind.value, "ids": list(self.ids)})

    @classmethod
    def decode(cls, payload: str) -> Event:
        data = json.loads(payload)
        return cls(Kind(data["kind"]), tuple(int(i) for i in data.get("ids", ())))

    @classmethod
    def about(cls, kind: Kind, ids: Iterable[int] = ()) -> Event:
        """An event naming `ids`, or all of them when they would not fit a notice."""
        unique = tuple(sorted(set(ids)))
        return cls(kind, unique if len(unique) <= MAX_IDS else ())


async def notify(conn: asyncpg.Connection, event: Event) -> None:
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, event.encode())


class Listener:
    """Calls `on_event` for every notice on the channel, on a connection of its own that it reopens when lost;
    `on_reconnect` runs after each reopening (notices may have been missed meanwhile)."""

    def __init__(
        self,
        dsn: str,
        on_event: Callable[[Event], None],
        on_reconnect: Callable[[], None] = lambda: None,
        retry_seconds: float = 1.0,
    ) -> None:
        self._dsn = dsn
        self._on_event = on_event
        self._on_reconnect = on_reconnect
        self._retry_seconds = retry_seconds
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self, seconds: float = 3.0) -> None:
        """Ends the listener within `seconds` (its connection is then dropped without a goodbye)."""
        self._stopping = True
        await cancelled(self._task, seconds)

    async def _run(self) -> None:
        first = True
        while not self._stopping:  # the flag too: a cancellation some library swallows must not keep it looping
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._received)
                self.connected.set()
                if not first:
                    log.info("listening for change notices again")
                    self._on_reconnect()
                first = False
                while not lost.is_set():  # an idle connection notices a dead server only when it talks
                    try:
                        async with asyncio.timeout(5):
                            await lost.wait()
                    except TimeoutError:
                        await conn.execute("SELECT 1", timeout=5)
                log.warning("lost the connection that listens for change notices; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cannot listen for change notices: %s", str(exc) or type(exc).__name__)
            finally:
                self.connected.clear()
                if conn is not None and not conn.is_closed():
                    conn.terminate()  # no goodbye: it is lost, or the listener is stopping
            await asyncio.sleep(self._retry_seconds)

    def _received(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            event = Event.decode(payload)
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a change notice that cannot be read: %r", payload[:200])
            return
        self._on_event(event)
