"""What the benchmarks share: a service with a demo catalogue of a given size (kept in bench/.work/ between runs),
started with the real `python server.py` (bench/servers.py, the one way everything starts it), and a results
writer (Markdown and CSV in bench/results/, with the machine's description)."""

from __future__ import annotations

import csv
import os
import platform
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil

from bench.servers import ROOT, Server, environment, started

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


@contextmanager
def service(size: Size, **settings: str) -> Iterator[Server]:
    """The service on free ports over the catalogue of `size` (created, seeded and trained on first use)."""
    demo = {"demo_books": str(size.books), "demo_users": str(size.users), "demo_interactions": str(size.interactions)}
    with started(WORK / size.name, demo | settings) as running:
        yield running


def cli(data_dir: Path, *args: str, **settings: str) -> None:
    """`recommender ARGS` on the data under `data_dir`; exits with its output when it fails."""
    command = [sys.executable, "-m", "recommender.cli", *args]
    done = subprocess.run(command, cwd=ROOT, env=environment(data_dir, settings), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"recommender {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


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
