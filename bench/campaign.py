"""What the fault campaign's scenarios share (bench/faults.py, bench/edges.py): a row of its table, and a running
`python server.py` with the campaign's admin key."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.servers import QUICK, Server, launch

ADMIN_KEY = "fault-campaign-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}


@dataclass
class Row:
    scenario: str
    expected: str
    observed: str
    ok: bool


@dataclass
class Service:
    """A running `python server.py` of the campaign, with an HTTP client that carries the admin key."""

    server: Server
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url, timeout=30, headers={"Authorization": ADMIN["Authorization"]})

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.server.process

    @property
    def env(self) -> dict[str, str]:
        return self.server.env

    def get(self, path: str) -> Any:
        return self.http.get(path).json()

    def wait(self, condition: Callable[[], bool], timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                if condition():
                    return True
            if self.process.poll() is not None:
                raise SystemExit(f"the service exited:\n{self.server.output()[-3000:]}")
            time.sleep(0.1)
        return False

    def idle(self) -> bool:
        return self.wait(lambda: self.get("/api/v1/health") == {"status": "ok", "models_loaded": True}, 120)

    def retrain(self) -> dict[str, Any]:
        self.http.post("/api/v1/retrain", json={"force": True}).raise_for_status()
        self.wait(lambda: self.get("/api/v1/health")["status"] == "retraining", 5)
        self.idle()
        last: dict[str, Any] = self.get("/api/v1/model/info")["last_retrain"]
        return last


@contextlib.contextmanager
def running_service(folder: Path, settings: dict[str, str], database_url: str | None) -> Iterator[Service]:
    """`python server.py` on free ports, small and quick to train (QUICK), with the campaign's admin key."""
    server = launch(folder, QUICK | {"api_key": ADMIN_KEY} | settings, database_url)
    running = Service(server)
    try:
        if not running.idle():
            raise SystemExit(f"the service did not start:\n{server.output()[-3000:]}")
        yield running
    finally:
        running.http.close()
        server.stop()
