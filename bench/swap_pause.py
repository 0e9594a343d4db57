"""What a swap costs the calls in flight: `.venv/bin/python -m bench.swap_pause [--pairs 2] [--clients 2]`.

`clients` threads call Recommend through Envoy back to back (random known users, limit 10) while the service
swaps versions by rollbacks (each version loaded, warmed and swapped in by every serving process, as a retrain's
promotion is): `pairs` times to another stored version and back to the one it served. Per rollback: the calls sent
from its start until half a second after it answered, their p50 and their slowest, and the slowest of the 5 s
after; beside the same for the 10 s before the first. Writes bench/results/swap_pause.*, on the 10,000-book /
50,000-user / 1M-interaction catalogue (`bench.serving` creates it, `bench.after_swap` retrains it: a second
version).
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time

import httpx

from bench.after_swap import Sample
from bench.harness import MEDIUM, service, write_results
from bench.servers import Server

QUIET = 10.0  # seconds of calls before the first rollback
BETWEEN = 10.0  # seconds from one rollback's answer to the next
AFTER = 5.0  # seconds after a rollback whose slowest call is reported too
SETTLE = 0.5  # seconds after a rollback's answer still counted as its own


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--clients", type=int, default=2)
    args = parser.parse_args()
    with service(MEDIUM) as running:
        served, other = _two_versions(running)
        calls, rollbacks = _during_rollbacks(running, [other, served] * args.pairs, args.clients)
    rows = [_row("10 s before the first rollback", _sent(calls, 0, QUIET), [])]
    for number, (started, answered) in enumerate(rollbacks, 1):
        own = _sent(calls, started, answered + SETTLE)
        rows.append(
            _row(f"rollback {number} ({answered - started:.2f} s)", own, _sent(calls, answered, answered + AFTER))
        )
    write_results(
        "swap_pause",
        "What a swap costs the calls in flight: Recommend through Envoy while versions swap",
        ["window", "calls", "not 200", "p50 ms", "slowest ms", "slowest of the 5 s after, ms"],
        rows,
        f"{args.clients} clients calling back to back through Envoy (httpx, random known users, limit 10); "
        f"{len(rollbacks)} rollbacks, {BETWEEN:.0f} s apart, to another stored version and back to the one served; a "
        f"rollback's window runs from its request until {SETTLE} s after its answer. Catalogue {MEDIUM.name}, "
        "default settings.",
    )
    return 0


def _two_versions(running: Server) -> tuple[str, str]:
    """The version served now and another that a rollback can serve."""
    models = httpx.get(f"{running.url}/api/v1/models", timeout=30).json()["models"]
    served = next(str(m["version"]) for m in models if m["status"] == "active")
    others = [str(m["version"]) for m in models if m["artifact_available"] and m["status"] == "retired"]
    if not others:
        raise SystemExit("the benchmark catalogue has one version to serve: run `python -m bench.after_swap` once")
    return served, others[0]


def _during_rollbacks(
    running: Server, targets: list[str], clients: int
) -> tuple[list[Sample], list[tuple[float, float]]]:
    """Every call of `clients` back-to-back callers while the service rolls back to each of `targets` in turn, and
    each rollback's start and answer (seconds since the calls began)."""
    calls: list[Sample] = []
    stop = threading.Event()
    began = time.monotonic()

    def call_back_to_back(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=running.url, timeout=30) as client:
            while not stop.is_set():
                sent = time.monotonic()
                answer = client.get(f"/api/v1/recommendations?user_id={rng.randint(1, MEDIUM.users)}&limit=10")
                calls.append(Sample(sent - began, time.monotonic() - sent, answer.status_code))

    threads = [threading.Thread(target=call_back_to_back, args=(seed,)) for seed in range(clients)]
    for thread in threads:
        thread.start()
    rollbacks = []
    try:
        time.sleep(QUIET)
        for version in targets:
            started = time.monotonic() - began
            answer = httpx.post(f"{running.url}/api/v1/model/rollback", json={"version": version}, timeout=300)
            answer.raise_for_status()
            rollbacks.append((started, time.monotonic() - began))
            time.sleep(BETWEEN)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return calls, rollbacks


def _sent(calls: list[Sample], start: float, end: float) -> list[Sample]:
    return [c for c in calls if start <= c.sent < end]


def _row(window: str, calls: list[Sample], after: list[Sample]) -> list[object]:
    seconds = [c.latency * 1000 for c in calls]
    return [
        window, len(calls), sum(c.status != 200 for c in calls), statistics.median(seconds), max(seconds),
        max((c.latency * 1000 for c in after), default=float("nan")),
    ]  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
