"""The fault campaign's scenarios at the service's edges (issue "trust at the edges"): a second server on the same
data folder, a CSV whose quote left open would merge rows, size refusals, a change of the active version during a
retrain, forged feedback, the embedded database killed, the small ones, and Schemathesis over the OpenAPI document
with every phase and every check. Each returns rows for bench/faults.py's table."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from bench.campaign import ADMIN, ADMIN_KEY, Row, Service, running_service
from bench.ports import free_port
from bench.servers import ROOT


def row(scenario: str, expected: str, observed: str, ok: bool) -> Row:
    return Row(scenario, expected, observed, ok)


def second_server(running: Service, environment: dict[str, str]) -> list[Row]:
    """Another `python server.py` with the running one's data folder and HTTP port, on other gRPC and metrics
    ports: it must exit 2 naming the owner, and touch nothing."""
    envoys = _envoys(running.process.pid)
    env = environment | {"RECOMMENDER_GRPC_PORT": str(free_port()), "RECOMMENDER_METRICS_PORT": str(free_port())}
    second = subprocess.run(
        [sys.executable, "server.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    said = (second.stdout + second.stderr).strip()
    alive = running.process.poll() is None and _envoys(running.process.pid) == envoys
    healthy = running.get("/api/v1/health").get("models_loaded") is True
    named = f"pid {running.process.pid}" in said and "belongs to a running process" in said
    return [
        row(
            "a second server on the same data folder and HTTP port",
            "exit 2 naming the running owner, touching nothing (the first and its Envoy serve on)",
            f"exit {second.returncode}: {said[-110:]!r}; first serving on: {alive and healthy}",
            second.returncode == 2 and named and alive and healthy,
        )
    ]


def _envoys(pid: int) -> list[int]:
    try:
        return sorted(c.pid for c in psutil.Process(pid).children(recursive=True) if c.name() == "envoy")
    except psutil.Error:
        return []


def import_with_a_quote_left_open(database_url: str, folder: Path) -> list[Row]:
    books = folder / "merged-rows.csv"
    books.write_text('book_id,title,authors\n30111,"Quoted title,Ann\n30112,Plain,Bo\n30113,Vinyl 12",Cid\n')
    env = {**os.environ, "DATABASE_URL": database_url}
    done = subprocess.run(
        [sys.executable, "-m", "recommender.cli", "import", "--books", str(books)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    named = "a line break inside title (this record runs over lines 2-4)" in done.stderr
    return [
        row(
            "a CSV import whose quote left open would merge three rows into one",
            "exit 1 naming the record's lines, nothing imported",
            f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1][-100:]!r}",
            done.returncode == 1 and named and "nothing imported" in done.stderr,
        )
    ]


def size_refusals(running: Service) -> list[Row]:
    """Oversize headers and bodies, every transfer encoding: 431 and 413 with the limit named, never a 429."""
    url = f"{running.url}/api/v1/books"
    big = json.dumps({"books": [{"book_id": i + 1, "description": "d" * 9000} for i in range(1000)]}).encode()
    cases = {
        "10 KB x-request-id": lambda: httpx.get(f"{running.url}/api/v1/health", headers={"x-request-id": "x" * 10_000}),
        "20 KB x-request-id": lambda: httpx.get(f"{running.url}/api/v1/health", headers={"x-request-id": "x" * 20_000}),
        "9 MB body, length": lambda: httpx.post(url, content=big, headers=ADMIN, timeout=60),
        "9 MB body, chunked": lambda: httpx.post(url, content=iter([big[:4_000_000], big[4_000_000:]]), headers=ADMIN),
        "5.9 MB body, chunked": lambda: httpx.post(url, content=iter([big[:5_900_000]]), headers=ADMIN),
    }
    expected = {
        "10 KB x-request-id": 200,
        "20 KB x-request-id": 431,
        "9 MB body, length": 413,
        "9 MB body, chunked": 413,
        "5.9 MB body, chunked": 413,
    }
    seen = {}
    for name, call in cases.items():
        try:
            answer = call()
            seen[name] = (answer.status_code, answer.text[:80])
        except httpx.HTTPError as exc:  # Envoy may close the connection once it has answered
            seen[name] = (0, type(exc).__name__)
    ok = all(seen[name][0] == status for name, status in expected.items())
    ok = ok and all("larger than" in seen[n][1] for n, s in expected.items() if s in (413, 431))
    return [
        row(
            "oversize headers and bodies, with a length and chunked",
            "431 for headers over 16 KiB, 413 for bodies over 4 MiB, the limit named; never 429",
            "; ".join(f"{name}: {status}" for name, (status, _) in seen.items()),
            ok,
        )
    ]


def change_during_a_retrain(running: Service) -> list[Row]:
    """A promotion, rollback or new canary by hand while a retrain runs (`recommender train` beside the service,
    searching for a few seconds): 409 each, and the retrain's release is not overridden by any of them."""
    running.retrain()  # a retired version to roll back to
    models = running.get("/api/v1/models")["models"]
    older = next(m["version"] for m in models if m["status"] == "retired" and m["artifact_available"])
    env = running.env | {"RECOMMENDER_TUNING": "auto", "RECOMMENDER_RETRAIN_TRIALS": "1000"}
    env |= {"RECOMMENDER_TUNING_SECONDS": "4"}
    train = subprocess.Popen(
        [sys.executable, "-m", "recommender.cli", "train", "--force"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    running.wait(lambda: running.get("/api/v1/health")["status"] == "retraining", 30)
    answers = {
        "promote": running.http.post("/api/v1/model/canary/promote", json={}).status_code,
        "rollback": running.http.post("/api/v1/model/rollback", json={"version": older}).status_code,
        "canary": running.http.post("/api/v1/model/canary", json={"version": older}).status_code,
    }
    output, _ = train.communicate(timeout=300)
    trained = re.search(r"trained model version (\S+):", output)
    running.wait(lambda: trained is not None and running.get("/api/v1/model/info")["version"] == trained[1], 30)
    serving = running.get("/api/v1/model/info")["version"]
    ok = set(answers.values()) == {409} and trained is not None and serving == trained[1]
    return [
        row(
            "promotion, rollback and a new canary by hand while `recommender train` runs",
            "409 for each (the rule: they wait for the retrain); the retrain's version then serves",
            f"{answers}; `train` exit {train.returncode}, serving {serving[-6:]}",
            ok,
        )
    ]


def forged_feedback(running: Service) -> list[Row]:
    """Feedback naming an unknown answer, a book it did not show, a time outside the window, another reader."""
    answer = running.http.get("/api/v1/recommendations", params={"user_id": 11, "limit": 5}).json()
    rid, books = answer["recommendation_id"], [b["book_id"] for b in answer["recommendations"]]
    other = next(b for b in range(1, 400) if b not in books)

    def feedback(**event: object) -> int:
        body = {"events": [{"recommendation_id": rid, "book_id": books[0], "event": "click", **event}]}
        return running.http.post("/api/v1/feedback", json=body, headers=ADMIN).status_code

    statuses = {
        "a book it did not show": feedback(book_id=other),
        "a date in 2001": feedback(timestamp=978_307_200),
        "an unknown answer (stored, never counted)": feedback(recommendation_id=str(uuid.uuid4())),
        "another reader's answer": running.http.post(
            "/api/v1/interactions",
            json={"interactions": [{"user_id": 12, "book_id": books[0], "recommendation_id": rid}]},
            headers=ADMIN,
        ).status_code,
    }
    expected = [400, 400, 200, 400]
    return [
        row(
            "forged feedback",
            "400 naming why for a book not shown, a time outside the window, another reader; an unknown answer "
            "stored but never counted",
            "; ".join(f"{name}: {status}" for name, status in statuses.items()),
            list(statuses.values()) == expected,
        )
    ]


def embedded_database_killed(folder: Path) -> list[Row]:
    """SIGKILL of the embedded PostgreSQL's postmaster during writes: 503 (never 500) while it is away, and the
    service starts it again itself, counted in recommender_database_restarts_total."""
    with running_service(folder, {}, None) as running:
        statuses: list[int] = []
        stop = threading.Event()

        def write(first: int) -> None:
            with httpx.Client(base_url=running.url, timeout=30, headers=ADMIN) as http:
                user = first
                while not stop.is_set():
                    user += 1
                    body = {"interactions": [{"user_id": user, "book_id": b} for b in range(1, 6)]}
                    statuses.append(http.post("/api/v1/interactions", json=body).status_code)

        writers = [threading.Thread(target=write, args=(800_000 + 50_000 * i,)) for i in range(4)]
        for thread in writers:
            thread.start()
        time.sleep(1.0)
        os.kill(int((folder / "var" / "pgdata" / "postmaster.pid").read_text().split()[0]), signal.SIGKILL)
        killed = time.monotonic()
        one = {"interactions": [{"user_id": 1, "book_id": 1}]}
        back = running.wait(lambda: running.http.post("/api/v1/interactions", json=one, headers=ADMIN).is_success, 60)
        seconds = time.monotonic() - killed
        stop.set()
        for thread in writers:
            thread.join(30)
        restarts = _metric(folder / "var", running.process.pid, "recommender_database_restarts_total")
    codes = sorted(set(statuses))
    return [
        row(
            "the embedded PostgreSQL's postmaster killed (SIGKILL) during 4 writers",
            "503 to every caller while it is away, never 500; started again by the service, counted",
            f"statuses {codes}; writes accepted again after {seconds:.1f} s; restarts counted: {restarts:g}",
            back and 500 not in codes and 503 in codes and restarts == 1,
        )
    ]


def _metric(data_dir: Path, pid: int, name: str) -> float:
    targets = json.loads((data_dir / "metrics-targets.json").read_text())
    address = next(t["targets"][0] for t in targets if t["labels"]["pid"] == str(pid) and t["labels"]["role"] == "main")
    text = httpx.get(f"http://{address}/metrics", timeout=5).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found[1]) if found else float("nan")


def small_ones(running: Service, environment: dict[str, str]) -> list[Row]:
    """A taken HTTP port named; a data folder that cannot be one is a one-line settings error; a canary that serves
    shows its files as available; Envoy's files are in the data folder (a SIGKILL leaves nothing in /tmp)."""
    with tempfile.TemporaryDirectory() as tmp:
        port = int(running.url.rsplit(":", 1)[1])
        taken = environment | {
            "RECOMMENDER_DATA_DIR": f"{tmp}/var",
            "RECOMMENDER_GRPC_PORT": str(free_port()),
            "RECOMMENDER_METRICS_PORT": str(free_port()),
            "RECOMMENDER_HTTP_PORT": str(port),
        }
        busy = _run([sys.executable, "server.py"], taken)
        proc = _run([sys.executable, "server.py"], environment | {"RECOMMENDER_DATA_DIR": "/proc/nope"})
    running.retrain()  # a retired version to serve as a canary
    models = running.get("/api/v1/models")["models"]
    older = next(m["version"] for m in models if m["status"] == "retired" and m["artifact_available"])
    running.http.post("/api/v1/model/canary", json={"version": older, "share": 0.2}, headers=ADMIN)
    canary = next(m for m in running.get("/api/v1/models")["models"] if m["version"] == older)
    running.http.post("/api/v1/model/canary/abort", json={}, headers=ADMIN)
    leftovers = [p for p in Path(tempfile.gettempdir()).glob("recommender-envoy-*")]
    checks = {
        f"port {port} named when taken": busy.returncode == 1 and f"127.0.0.1:{port}" in busy.stderr,
        "/proc/nope one line": proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1,
        "a serving canary's files available": canary["status"] == "canary" and canary["artifact_available"],
        "no recommender-envoy-* in /tmp": not leftovers,
    }
    return [
        row(
            "the small ones",
            "each as documented",
            "; ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in checks.items()),
            all(checks.values()),
        )
    ]


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def schemathesis(url: str, examples: int, seed: int = 1) -> list[Row]:
    """Schemathesis over the served OpenAPI document: every phase, every check, the admin key given."""
    done = schemathesis_run(url, examples, seed)
    summary = [line.strip() for line in done.stdout.splitlines() if "generated" in line or "failure" in line]
    return [
        row(
            f"Schemathesis, every phase and check, {examples} examples per operation",
            "no failure: the document declares every constraint the server enforces",
            "; ".join(summary[-2:])[:160] or done.stdout[-160:],
            done.returncode == 0,
        )
    ]


def schemathesis_run(
    url: str, examples: int, seed: int = 1, credential: bool = True
) -> subprocess.CompletedProcess[str]:
    """Schemathesis with every phase and check (bench/schemathesis.toml's settings), with the admin key or none."""
    here = Path(__file__).parent
    command = [
        sys.executable, str(here / "schemathesis_cli.py"), "--config-file", str(here / "schemathesis.toml"),
        "run", f"{url}/api/v1/openapi.json",
        "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(examples), "--seed", str(seed), "--workers", "2", "--no-color",
    ] + (["-H", f"Authorization: Bearer {ADMIN_KEY}"] if credential else [])  # fmt: skip
    # From a folder of its own: it keeps a cache (.schemathesis/) where it runs.
    with tempfile.TemporaryDirectory() as folder:
        return subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False, cwd=folder)


Scenario = Callable[[], list["Row"]]
