"""The first model with default settings at 1,000,000 interactions (the demo generator at 10,000 books and 50,000
readers): the time from an empty database to a served model (the search included), and what its configuration
costs a request against a 64-factor model on the same data.

    python -m bench.first_model [--seconds 20]

1. `python server.py` on a fresh data folder with default settings: seconds until it serves (generation, import
   and the first retrain) and the version's own training seconds; p50/p99 of Recommend through Envoy at one
   connection (wrk, known readers, the better of two runs);
2. `recommender train --force` with RECOMMENDER_TUNING=off and 64 factors on the same database, then the same
   measurement with that version serving.

Writes bench/results/first_model.md and .csv.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

import httpx

from bench.harness import MEDIUM, WORK, cli, write_results
from bench.servers import started
from bench.serving import wrk_load

FOLDER = WORK / "first-model"
DEMO = {"demo_books": MEDIUM.books, "demo_users": MEDIUM.users, "demo_interactions": MEDIUM.interactions}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    shutil.rmtree(FOLDER, ignore_errors=True)
    launched = time.perf_counter()
    with started(FOLDER, DEMO) as running:
        to_first = time.perf_counter() - launched
        default, default_ms = _served(running.url), _latency(running.url, args.seconds)
    cli(FOLDER, "train", "--force", **{k: str(v) for k, v in DEMO.items()}, TUNING="off", ALS_FACTORS="64")
    with started(FOLDER, DEMO) as running:
        fixed, fixed_ms = _served(running.url), _latency(running.url, args.seconds)
    rows: list[list[object]] = [
        ["default settings", round(to_first), *default, *default_ms],
        ["64 factors, no search", "", *fixed, *fixed_ms],
        ["ratio", "", "", "", "", *(f"{a / b:.2f}x" for a, b in zip(default_ms, fixed_ms, strict=True))],
    ]
    write_results(
        "first_model",
        "The first model at 1,000,000 interactions (10,000 books, 50,000 readers) with default settings",
        ["model", "s to first model", "training s", "factors", "NDCG@10", "p50 ms", "p99 ms"],
        rows,
        "s to first model: from launch on an empty folder (demo generation and import included) until it serves. "
        "Latency: wrk through Envoy, one connection, known readers, limit 10, the better of two runs.",
    )
    return 0


def _served(url: str) -> list[object]:
    info = httpx.get(f"{url}/api/v1/model/info", timeout=10).json()
    params, metrics = info.get("params", {}), info.get("metrics", {})
    seconds = float(info.get("training_seconds", 0.0))
    return [round(seconds), int(params.get("factors", 0)), round(float(metrics.get("ndcg_at_10", 0.0)), 4)]


def _latency(url: str, seconds: float) -> list[float]:
    wrk_load(url, "known", MEDIUM.users, 5, 1)  # warm-up
    runs = [wrk_load(url, "known", MEDIUM.users, seconds, 1) for _ in range(2)]
    _rate, p50, _p90, p99 = min(runs, key=lambda run: run[1])
    return [p50, p99]


if __name__ == "__main__":
    sys.exit(main())
