"""A version's life cycle and the service's, in real processes: every stop is bounded and leaves no process
behind, in every state; a server killed mid-retrain leaves no trainer running and the next start cleans up after
it; a failed retrain or rollback leaves nothing half-done."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import grpc
import httpx
import psutil
import pytest

from bench.harness import free_port
from recommender.client import RecommenderClient
from recommender.processes import is_alive
from tests.conftest import SMALL_DEMO, active_version, create_database, wait_for
from tests.test_gateway import ROOT, Server, start_server

STOP_SECONDS = 5.0  # what the service promises for a stop, in any state


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def trainers(pid: int) -> list[psutil.Process]:
    """Retrains running under the server `pid`: children of its fork server."""
    found = []
    for process in descendants(pid):
        with contextlib.suppress(psutil.Error):
            parent = process.parent()
            if parent is not None and "forkserver" in " ".join(parent.cmdline()):
                found.append(process)
    return found


def postmaster(pgdata: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    return None


def stop_and_check(server: Server, pgdata: Path | None = None) -> float:
    """SIGTERM; the command must end within STOP_SECONDS, with every process it started gone when it returns."""
    tree = {p.pid: p.name() for p in descendants(server.process.pid)}
    database = postmaster(pgdata) if pgdata else None
    if database is not None:
        tree[database] = "postgres"
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(30)
    seconds = time.monotonic() - started
    alive = {pid: name for pid, name in tree.items() if is_alive(pid)}
    assert code == 0, server.output()
    assert seconds < STOP_SECONDS, f"the stop took {seconds:.1f} s:\n{server.output()}"
    assert not alive, f"still running after the command returned: {alive}"
    return seconds


def get(server: Server, path: str) -> dict[str, object]:
    body: dict[str, object] = httpx.get(f"{server.url}{path}", timeout=10).json()
    return body


def stage(server: Server) -> str:
    progress = get(server, "/api/v1/model/info").get("retrain_progress")
    return str(progress["stage"]) if isinstance(progress, dict) else ""


def post_quietly(url: str) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(url, timeout=10)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder for the module's servers: its embedded PostgreSQL, demo catalogue and first model are made
    once."""
    return tmp_path_factory.mktemp("lifecycle")


@pytest.mark.parametrize("state", ["idle, with workers", "mid-retrain", "database down", "during a rollback"])
def test_a_stop_ends_everything_within_seconds_in_every_state(home: Path, state: str) -> None:
    pgdata = home / "var" / "pgdata"
    if state.startswith("idle"):
        server = start_server(None, home, workers="3")
    elif state == "mid-retrain":
        server = start_server(None, home, tuning="auto", tuning_seconds="60")  # a retrain that lasts
    else:
        server = start_server(None, home)
    try:
        if state == "mid-retrain":
            assert httpx.post(f"{server.url}/api/v1/retrain", timeout=10).status_code == 200
            wait_for(lambda: stage(server) == "evaluating", timeout=30)
            assert trainers(server.process.pid), "the retrain runs in a child of the fork server"
        elif state == "database down":
            pid = postmaster(pgdata)
            assert pid is not None
            os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown
            wait_for(lambda: not is_alive(pid), timeout=20)
        elif state == "during a rollback":
            if len(get(server, "/api/v1/models")["models"]) < 2:  # type: ignore[arg-type]
                httpx.post(f"{server.url}/api/v1/retrain", timeout=10)
                wait_for(lambda: get(server, "/api/v1/health")["status"] == "ok", timeout=60)
            threading.Thread(target=post_quietly, args=(f"{server.url}/api/v1/model/rollback",), daemon=True).start()
            time.sleep(0.02)
        else:
            assert len([p for p in descendants(server.process.pid) if "worker" in " ".join(p.cmdline())]) == 2
        print(f"stop {state}: {stop_and_check(server, pgdata):.2f} s")
    finally:
        if server.process.poll() is None:
            server.process.kill()


# A server killed with SIGKILL at a given moment of a retrain. The moments are made to last by holding a table
# lock that the retrain needs next: the snapshot (loading), the registry record (saving, with the version's files
# already complete on disk); evaluating and fitting last by their own work.
HOLD = {"loading": "LOCK TABLE books IN ACCESS EXCLUSIVE MODE", "saving": "LOCK TABLE model_versions IN EXCLUSIVE MODE"}
SLOW = {"evaluating": {"tuning": "auto", "tuning_seconds": "60"}, "cf": {"als_iterations": "200"}}


@contextlib.contextmanager
def grpc_server(database_url: str, workdir: Path, **settings: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`recommender serve --no-gateway`, gRPC only, on a free port; yields the process and its target."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "RECOMMENDER_DATA_DIR": str(workdir / "var"),
        "RECOMMENDER_ARTIFACTS_DIR": str(workdir / "artifacts"),
        "RECOMMENDER_GRPC_PORT": str(port),
        "RECOMMENDER_ALS_ITERATIONS": "8",
        "RECOMMENDER_TUNING": "off",
        **{f"RECOMMENDER_{k.upper()}": str(v) for k, v in {**SMALL_DEMO, **settings}.items()},
    }
    log = open(workdir / f"server-{port}.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [sys.executable, "-m", "recommender.cli", "serve", "--no-gateway"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    target = f"127.0.0.1:{port}"
    try:
        with RecommenderClient(target, max_attempts=2) as client:

            def ready() -> bool:
                assert process.poll() is None, (workdir / f"server-{port}.log").read_text()
                try:
                    return client.health(timeout=2).models_loaded
                except grpc.RpcError:
                    return False

            wait_for(ready, timeout=90)
        yield process, target
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        log.close()


async def hold_lock(database_url: str, statement: str, release: asyncio.Event) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute(statement)
            await release.wait()
    finally:
        await conn.close()


@pytest.mark.parametrize("moment", ["loading", "evaluating", "cf", "saving"])
def test_a_server_killed_mid_retrain_leaves_no_trainer_and_its_restart_cleans_up(
    postgres_url: str, tmp_path: Path, moment: str
) -> None:
    database_url = create_database(postgres_url)
    with grpc_server(database_url, tmp_path) as (_process, target):  # the first model
        active = active_version(database_url)
    assert active is not None
    versions = tmp_path / "artifacts" / "versions"
    assert [p.name for p in versions.iterdir()] == [active]

    loop = asyncio.new_event_loop()
    release = asyncio.Event()
    holder = threading.Thread(target=loop.run_forever, daemon=True)
    holder.start()
    try:
        with grpc_server(database_url, tmp_path, **SLOW.get(moment, {})) as (process, target):
            if moment in HOLD:
                held = asyncio.run_coroutine_threadsafe(hold_lock(database_url, HOLD[moment], release), loop)
                time.sleep(0.3)
            with RecommenderClient(target, max_attempts=2) as client:
                client.retrain()
                wait_for(lambda: client.model_info().retrain_progress.stage == moment, timeout=60, interval=0.01)
            running = trainers(process.pid)
            assert len(running) == 1
            if moment == "saving":  # the new version's files are complete; its registry record is not written
                wait_for(lambda: len(list(versions.iterdir())) == 2, timeout=10)
            process.kill()
            process.wait(10)
            time.sleep(2.0)
            assert not [p.pid for p in running if is_alive(p.pid)], "the trainer outlived its server"
            if moment in HOLD:
                loop.call_soon_threadsafe(release.set)
                held.result(10)
        assert active_version(database_url) == active  # the killed retrain changed nothing in the registry

        (tmp_path / "artifacts" / ".incoming-99990101T000000000000Z-abcdef").mkdir()
        slow = SLOW["cf"]  # long enough to look at
        with grpc_server(database_url, tmp_path, **slow) as (process, target), RecommenderClient(target) as client:
            assert client.model_info().version == active
            assert [p.name for p in versions.iterdir()] == [active]  # the unregistered folders are gone
            assert not list((tmp_path / "artifacts").glob(".incoming-*"))
            client.retrain()
            wait_for(lambda: client.model_info().retrain_progress.stage in ("content", "evaluating", "cf"), timeout=30)
            assert len(trainers(process.pid)) == 1  # alone: no orphan trains beside it
            wait_for(lambda: client.health().status != "retraining", timeout=60)
            assert client.model_info().version != active
    finally:
        loop.call_soon_threadsafe(release.set)
        loop.call_soon_threadsafe(loop.stop)
        holder.join(5)
