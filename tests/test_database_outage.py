"""PostgreSQL dying under the service: every caller gets 503 (or "may have landed"), never a 500, and the
embedded database, which the service owns, is started again by it, counted in a metric."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from bench.servers import start_server
from recommender.storage.db import OneLineFailures
from tests.support.waiting import wait_for


def test_a_killed_embedded_database_is_started_again_and_no_caller_sees_a_500(tmp_path: Path) -> None:
    server = start_server(None, tmp_path)
    pgdata = tmp_path / "var" / "pgdata"
    statuses: list[int] = []
    stop = threading.Event()

    def writer(first_user: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            user = first_user
            while not stop.is_set():
                user += 1
                body = {"interactions": [{"user_id": user, "book_id": book} for book in range(1, 6)]}
                statuses.append(http.post("/api/v1/interactions", json=body).status_code)

    try:
        writers = [threading.Thread(target=writer, args=(700_000 + 100_000 * i,)) for i in range(4)]
        for thread in writers:
            thread.start()
        time.sleep(1.0)
        postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: not psutil.pid_exists(postmaster), timeout=10)

        def accepted() -> bool:
            answer = httpx.post(
                f"{server.url}/api/v1/interactions", json={"interactions": [{"user_id": 1, "book_id": 1}]}, timeout=10
            )
            return answer.status_code == 200

        wait_for(accepted, timeout=45, interval=0.2)
        back_after = time.monotonic() - killed
        time.sleep(0.5)
        stop.set()
        for thread in writers:
            thread.join(30)
        print(f"writes accepted again {back_after:.1f} s after the postmaster was killed")
        assert 500 not in statuses and set(statuses) <= {200, 503}, sorted(set(statuses))
        assert 503 in statuses
        targets = json.loads((tmp_path / "var" / "metrics-targets.json").read_text())
        main = next(t["targets"][0] for t in targets if t["labels"]["role"] == "main")
        metrics = httpx.get(f"http://{main}/metrics", timeout=5).text
        assert "recommender_database_restarts_total 1.0" in metrics
        assert "the embedded PostgreSQL has stopped: starting it again" in server.output()
    finally:
        stop.set()
        assert server.stop() == 0


def test_the_pools_background_reconnect_failures_are_logged_one_line_each_naming_the_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("asyncpg.pool")  # asyncpg logs its background reconnects here, with a traceback
    one_line = OneLineFailures()
    logger.addFilter(one_line)
    try:
        try:
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
        except ConnectionRefusedError:
            logger.warning("Failed to restore the pool connection floor; %s", "retrying", exc_info=True)
    finally:
        logger.removeFilter(one_line)
    [record] = [r for r in caplog.records if r.name == "asyncpg.pool"]
    assert record.exc_info is None and record.exc_text is None
    assert record.getMessage() == (
        "Failed to restore the pool connection floor; retrying "
        "(ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 5432))"
    )
