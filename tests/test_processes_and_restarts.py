"""Operations through the real `python server.py` and Envoy: credentials over HTTP, request ids in headers and
logs, safe defaults at start-up, a restart after SIGKILL in the middle of a retrain, and every serving process
counting its own requests."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import psutil
import pytest

from bench.ports import free_port
from bench.servers import IDLE, ROOT, SMALL_DEMO, Server, start_server, wait_idle
from recommender.serving.telemetry import TARGETS_FILE, read_targets
from tests.support.database import Template, create_database
from tests.support.metrics import scraped
from tests.support.waiting import wait_for
from tests.test_version_life_cycle import stop_and_check

KEY = "s3cret-admin-key-4242"
JWT_SECRET = "a-long-enough-hmac-secret-for-hs256"


@pytest.fixture(scope="module")
def guarded(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(
        create_database(postgres_url),
        tmp_path_factory.mktemp("guarded"),
        API_KEY=KEY,
        JWT_SECRET=JWT_SECRET,
        LOG_FORMAT="json",
    )
    yield running
    running.stop()


def test_credentials_through_envoy(guarded: Server) -> None:
    with httpx.Client(base_url=guarded.url, timeout=30) as http:
        missing = http.post("/api/v1/retrain")
        assert missing.status_code == 401 and missing.json()["detail"].startswith("missing credentials")
        wrong = http.post("/api/v1/retrain", headers={"authorization": "Bearer nope"})
        assert (wrong.status_code, wrong.json()) == (
            403,
            {"detail": "invalid credentials: the key or token is not accepted"},
        )
        assert http.post("/api/v1/model/rollback", headers={"x-api-key": "nope"}).status_code == 403
        assert http.get("/api/v1/recommendations?user_id=1&limit=2").status_code == 200  # reads stay open
        assert http.post("/api/v1/retrain", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
        wait_idle(http)
        assert http.post("/api/v1/retrain", headers={"x-api-key": KEY}).status_code == 200
        wait_idle(http)
        good = jwt.encode({"sub": "ops", "exp": time.time() + 60}, JWT_SECRET, algorithm="HS256")
        assert http.post("/api/v1/retrain", headers={"authorization": f"Bearer {good}"}).status_code == 200
        wait_idle(http)
        expired = jwt.encode({"sub": "ops", "exp": time.time() - 60}, JWT_SECRET, algorithm="HS256")
        answer = http.post("/api/v1/retrain", headers={"authorization": f"Bearer {expired}"})
        assert (answer.status_code, answer.json()) == (403, {"detail": "invalid credentials: the token has expired"})
    assert KEY not in guarded.output() and JWT_SECRET not in guarded.output()


def test_the_request_id_comes_back_and_tags_the_log_lines(guarded: Server) -> None:
    response = httpx.post(
        f"{guarded.url}/api/v1/retrain", headers={"x-request-id": "trace-me-123", "x-api-key": KEY}, timeout=30
    )
    assert response.status_code == 200 and response.headers["x-request-id"] == "trace-me-123"
    with httpx.Client(base_url=guarded.url, timeout=30) as http:
        wait_idle(http)
        generated = http.get("/api/v1/health").headers.get("x-request-id", "")
        assert len(generated) >= 16  # Envoy made one up
    records = [json.loads(line) for line in guarded.output().splitlines() if line.startswith("{")]
    tagged = [r for r in records if r.get("request_id") == "trace-me-123"]
    assert any("retrain started on request" in r["message"] for r in tagged), records[-5:]
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"RECOMMENDER_HTTP_HOST": "0.0.0.0"}, "refusing to serve on a non-loopback address (RECOMMENDER_HTTP_HOST"),
        ({"RECOMMENDER_RETRAIN_SCHEDULE": "often"}, "RECOMMENDER_RETRAIN_SCHEDULE: must be a cron expression"),
    ],
)
def test_unsafe_or_bad_operations_settings_stop_start_up(
    tmp_path: Path, settings: dict[str, str], expected: str
) -> None:
    env = {**os.environ, "RECOMMENDER_DATA_DIR": str(tmp_path), **settings}
    result = subprocess.run(
        [sys.executable, "server.py"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False
    )
    assert result.returncode == 2
    assert expected in result.stderr
    assert "RECOMMENDER_API_KEY" in result.stderr or "RECOMMENDER_HTTP_HOST" not in settings
    assert not (tmp_path / "pgdata").exists()  # nothing started


def test_a_sigkill_mid_retrain_then_a_plain_restart_serves_again(tmp_path: Path) -> None:
    ports = free_port(), free_port()
    # Tuning for 6 s makes a retrain long enough to be killed in the middle.
    first = start_server(None, tmp_path, ports=ports, TUNING="auto", RETRAIN_TRIALS="1000", TUNING_SECONDS="6")
    version = httpx.get(f"{first.url}/api/v1/model/info", timeout=10).json()["version"]
    envoys = first.envoy_pids()
    assert httpx.post(f"{first.url}/api/v1/retrain", timeout=10).status_code == 200
    time.sleep(1.0)
    assert first.health() == {"status": "retraining", "models_loaded": True}
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    wait_for(lambda: not any(psutil.pid_exists(pid) for pid in envoys), timeout=10)  # died with its parent

    started = time.monotonic()
    second = start_server(None, tmp_path, ports=ports, TUNING="auto", RETRAIN_TRIALS="1000", TUNING_SECONDS="6")
    seconds = time.monotonic() - started
    try:
        assert second.health() == IDLE
        assert httpx.get(f"{second.url}/api/v1/model/info", timeout=10).json()["version"] == version
        print(f"restart after SIGKILL served again in {seconds:.1f} s")
        assert seconds < 30
    finally:
        assert second.stop() == 0


def test_train_shows_a_progress_bar_in_a_terminal_and_lines_elsewhere(postgres_url: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": create_database(postgres_url),
        "RECOMMENDER_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "RECOMMENDER_TUNING": "off",
        **{f"RECOMMENDER_{key.upper()}": str(value) for key, value in SMALL_DEMO.items()},
    }
    plain = subprocess.run(
        [sys.executable, "train.py"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False
    )
    assert plain.returncode == 0, plain.stderr
    for stage in ("loading", "content", "evaluating", "cf", "saving"):
        assert f"retrain stage {stage} took" in plain.stderr
    assert "%|" not in plain.stderr and "100%" not in plain.stderr

    main, child = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "train.py"], stdin=child, stdout=child, stderr=child, env=env, cwd=ROOT, close_fds=True
    )
    os.close(child)
    output = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the terminal closed: the command is done
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(120) == 0
    text = output.decode(errors="replace")
    assert "100%" in text and "trained model version" in text
    assert "retrain stage" not in text


def test_workers_share_the_load_and_follow_the_main_process(template: Template, tmp_path: Path) -> None:
    server = start_server(template.copy(tmp_path), tmp_path, WORKERS="2")
    try:
        children = psutil.Process(server.process.pid).children(recursive=True)
        assert sum("recommender.cli worker" in " ".join(child.cmdline()) for child in children) == 1
        server.wait_balanced(2, timeout=10)  # Envoy's health checks (every 0.5 s) let a process in once it serves

        def recommend(user: int) -> dict[str, object]:  # a connection each, as from many clients
            answer: dict[str, object] = httpx.get(
                f"{server.url}/api/v1/recommendations?user_id={user}", timeout=30
            ).json()
            return answer

        with httpx.Client(base_url=server.url, timeout=30) as http:
            answers = [recommend(u) for u in range(1, 41)]
            assert all("model_version" in a for a in answers), answers
            versions = {a["model_version"] for a in answers}
            assert len(versions) == 1
            assert http.post("/api/v1/retrain").status_code == 200
            wait_idle(http)
            new = http.get("/api/v1/model/info").json()["version"]
            assert new not in versions

            def everyone_serves_the_new_version() -> bool:
                answers = [recommend(u) for u in range(1, 21)]
                return {answer["model_version"] for answer in answers} == {new}

            wait_for(everyone_serves_the_new_version, timeout=5)
        served = [int(line.rsplit("::", 1)[1]) for line in server.serving_upstreams() if "::rq_total::" in line]
        assert len(served) == 2 and all(count > 5 for count in served), served
    finally:
        assert server.stop() == 0
    wait_for(lambda: not any(_alive(child) for child in children), timeout=10)  # workers, fork server, Envoy


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_recommendations_answer_as_soon_as_health_says_ready_with_two_processes(
    postgres_url: str, tmp_path: Path
) -> None:
    """When the first model arrives, no serving process has passed Envoy's health check yet (every 0.5 s): Envoy
    then asks any of them, and one without a model hands the read on to another, so a reader never gets "no
    healthy upstream" from a service whose health says it is ready."""
    server = start_server(create_database(postgres_url), tmp_path, wait=False, WORKERS="2")
    try:
        wait_for(lambda: server.health().get("models_loaded") is True, timeout=120, interval=0.005)
        with httpx.Client(base_url=server.url, timeout=10) as http:
            answers = [http.get("/api/v1/recommendations?user_id=1&limit=3") for _ in range(40)]
        assert all(a.status_code == 200 and len(a.json()["recommendations"]) == 3 for a in answers), [
            (a.status_code, a.text[:100]) for a in answers if a.status_code != 200
        ]
    finally:
        assert server.stop() == 0


def test_every_serving_process_counts_its_requests(template: Template, tmp_path: Path) -> None:
    server = start_server(template.copy(tmp_path), tmp_path, workers="3")
    try:
        entries = read_targets(tmp_path / "var" / TARGETS_FILE)
        assert sorted(e["labels"]["role"] for e in entries) == ["main", "worker", "worker"]
        addresses = [e["targets"][0] for e in entries]
        sample = 'recommender_requests_total{code="OK",method="Recommend"}'
        server.wait_balanced(3)
        for user in range(1, 31):
            with httpx.Client(timeout=10) as http:  # a new connection each time
                http.get(f"{server.url}/api/v1/recommendations?user_id={user}&limit=3").raise_for_status()
        counted = [scraped(address, sample) for address in addresses]
        assert sum(counted) == 30, counted
        assert sum(1 for count in counted if count > 0) >= 2, counted  # spread over the processes
    finally:
        stop_and_check(server)
    assert read_targets(tmp_path / "var" / TARGETS_FILE) == []  # each process took itself out
