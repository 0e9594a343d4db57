"""What the benchmarks share: a service with a demo catalogue of a given size (kept in bench/.work/ between runs),
started with the real `python server.py`, and a results writer (Markdown and CSV in bench/results/, with the
machine's description)."""

from __future__ import annotations

import csv
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import psutil

from recommender.serving.telemetry import TARGETS_FILE, read_targets

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work"
RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Size:
    books: int
    users: int
    interactions: int

    @property
    def name(self) -> str:
        return f"{self.books}b-{self.users}u-{self.interactions}i"


MEDIUM = Size(10_000, 50_000, 1_000_000)  # the size


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    url: str
    grpc_target: str
    data_dir: Path
    log: Path

    def health(self) -> dict[str, object]:
        try:
            body: dict[str, object] = httpx.get(f"{self.url}/api/v1/health", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return {}
        return body

    def wait_idle(self, timeout: float = 1800) -> None:
        deadline = time.monotonic() + timeout
        while self.health() != {"status": "ok", "models_loaded": True}:
            if self.process.poll() is not None:
                raise SystemExit(f"the service exited:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise SystemExit("the service did not become idle in time")
            time.sleep(0.5)

    def metrics_url(self) -> str:
        """The main process's Prometheus endpoint, from the targets file in the data folder."""
        entries = read_targets(self.data_dir / "var" / TARGETS_FILE)
        pid = str(self.process.pid)
        mine = [e for e in entries if e["labels"].get("role") == "main" and e["labels"].get("pid") == pid]
        if not mine:
            raise SystemExit(f"the service lists no metrics endpoint: {entries}")
        return f"http://{mine[0]['targets'][0]}/metrics"

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.process.pid).memory_info().rss)


@contextmanager
def service(size: Size, **settings: str) -> Iterator[Service]:
    """The service on free ports over the catalogue of `size` (created, seeded and trained on first use)."""
    demo = {"demo_books": str(size.books), "demo_users": str(size.users), "demo_interactions": str(size.interactions)}
    with started(WORK / size.name, **demo, **settings) as running:
        yield running


def environment(data_dir: Path, **settings: str) -> dict[str, str]:
    """This process's environment without any RECOMMENDER_* or DATABASE_URL, and then the service's data (an
    embedded PostgreSQL) and artifacts under `data_dir`, and `settings` (RECOMMENDER_* without the prefix)."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("RECOMMENDER_")}
    return env | {
        "RECOMMENDER_DATA_DIR": str(data_dir / "var"),
        "RECOMMENDER_ARTIFACTS_DIR": str(data_dir / "artifacts"),
        **{f"RECOMMENDER_{key.upper()}": value for key, value in settings.items()},
    }


def cli(data_dir: Path, *args: str, **settings: str) -> None:
    """`recommender ARGS` on the data under `data_dir`; exits with its output when it fails."""
    command = [sys.executable, "-m", "recommender.cli", *args]
    done = subprocess.run(command, cwd=ROOT, env=environment(data_dir, **settings), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"recommender {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


@contextmanager
def started(data_dir: Path, **settings: str) -> Iterator[Service]:
    """`python server.py` on free ports with its data under `data_dir`, once it serves a model; stopped on exit."""
    data_dir.mkdir(parents=True, exist_ok=True)
    http_port, grpc_port = free_port(), free_port()
    env = environment(data_dir, http_port=str(http_port), grpc_port=str(grpc_port), **settings)
    log = data_dir / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "server.py"], cwd=ROOT, env=env, stdout=out, stderr=out)
    running = Service(process, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", data_dir, log)
    try:
        running.wait_idle()
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(120)


def percentiles(latencies: Sequence[float]) -> tuple[float, float, float]:
    """p50, p95, p99 in milliseconds."""
    if not latencies:
        return float("nan"), float("nan"), float("nan")
    p50, p95, p99 = np.percentile(np.asarray(latencies) * 1000, [50, 95, 99])
    return float(p50), float(p95), float(p99)


def machine() -> str:
    memory = psutil.virtual_memory().total / 2**30
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {memory:.0f} GiB, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def write_results(name: str, title: str, columns: list[str], rows: list[list[object]], notes: str = "") -> Path:
    """bench/results/<name>.md and .csv; prints the table too."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    shown = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    table = "\n".join(
        ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + ["| " + " | ".join(r) + " |" for r in shown]
    )
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = f"# {title}\n\n{when}; {machine()}\n\n{table}\n" + (f"\n{notes}\n" if notes else "")
    path = RESULTS / f"{name}.md"
    path.write_text(text, encoding="utf-8")
    with open(RESULTS / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    print(text)
    return path


# (x, label, colour) of a dashed vertical line, and (label, xs, ys in ms, colour, dot size) of a set of points
Mark = tuple[float, str, str]
Points = tuple[str, Sequence[float], Sequence[float], str, float]


def latency_chart(name: str, title: str, xlabel: str, points: Sequence[Points], marks: Sequence[Mark]) -> None:
    """bench/results/<name>.png: latencies (log scale) over time, with events marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(11, 4))
    for label, xs, ys, colour, size in points:
        if xs:
            axis.scatter(xs, ys, s=size, color=colour, label=label)
    for x, label, colour in marks:
        axis.axvline(x, color=colour, linestyle="--", label=label)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("latency, ms")
    axis.set_yscale("log")
    axis.legend(loc="upper right")
    axis.set_title(title)
    figure.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    figure.savefig(RESULTS / f"{name}.png", dpi=100)
    plt.close(figure)
