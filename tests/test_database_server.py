"""The embedded PostgreSQL: shared between processes, stopped by the last one, even after one was killed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from recommender.settings import load_settings
from recommender.storage.database_server import database_url

HOLD = """
import sys, time
from recommender.storage.database_server import database_url
from recommender.settings import load_settings
with database_url(load_settings(data_dir=sys.argv[1])) as url:
    print(url, flush=True)
    time.sleep(600)
"""


def postmaster_pid(pgdata: Path) -> int | None:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text().split()[0])
    return pid if psutil.pid_exists(pid) else None


def test_last_user_stops_the_server_even_after_a_killed_one(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().startswith("postgresql://")
    holder.send_signal(signal.SIGKILL)  # dies without letting go of the server
    holder.wait(10)
    pid = postmaster_pid(settings.embedded_pgdata)
    assert pid is not None  # still running, as a crashed service leaves it

    with database_url(settings) as url:  # attaches to the running server
        assert url.startswith("postgresql://")
        assert postmaster_pid(settings.embedded_pgdata) == pid
    deadline = time.monotonic() + 20
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the last user did not stop the embedded server"
        time.sleep(0.1)
