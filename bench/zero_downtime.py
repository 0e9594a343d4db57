"""Zero downtime, measured: `.venv/bin/python -m bench.zero_downtime [--rate 40]`.

A constant-rate load of Recommend through Envoy (known users, limit 10) for the whole of a retrain on the
1,000,000-interaction catalogue, and as long before and after it: non-200 answers, timeouts, and p99 before,
during and after, at the same light load; plus a PNG of latency over time with the retrain's start, swap and end
marked, and the server's memory through the swap. Writes bench/results/zero_downtime.*.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import threading
import time
from dataclasses import dataclass

import httpx

from bench.harness import MEDIUM, latency_chart, percentiles, service, write_results
from bench.servers import Server

TIMEOUT = 2.0


@dataclass
class Sample:
    sent: float  # seconds since the load started
    latency: float
    status: int  # 0: timed out or failed
    version: str


async def constant_load(url: str, rate: float, stop: threading.Event, samples: list[Sample], users: int) -> None:
    """One request every 1/rate seconds, whatever the answers do (open loop: slow answers don't slow the load)."""
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT, limits=httpx.Limits(max_connections=64)) as client:

        async def one(sent: float) -> None:
            t0 = time.perf_counter()
            try:
                response = await client.get(f"/api/v1/recommendations?user_id={random.randint(1, users)}&limit=10")
                version = response.json().get("model_version", "") if response.status_code == 200 else ""
                samples.append(Sample(sent, time.perf_counter() - t0, response.status_code, version))
            except httpx.HTTPError:
                samples.append(Sample(sent, time.perf_counter() - t0, 0, ""))

        tasks = []
        tick = 0
        while not stop.is_set():
            sent = tick / rate
            await asyncio.sleep(max(0.0, started + sent - time.perf_counter()))
            tasks.append(asyncio.create_task(one(sent)))
            tick += 1
        await asyncio.gather(*tasks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second (a light load)")
    parser.add_argument("--calm", type=float, default=15.0, help="seconds of load before and after the retrain")
    args = parser.parse_args()
    with service(MEDIUM) as running:
        samples: list[Sample] = []
        stop = threading.Event()
        loader = threading.Thread(
            target=lambda: asyncio.run(constant_load(running.url, args.rate, stop, samples, MEDIUM.users))
        )
        began = time.perf_counter()
        loader.start()
        time.sleep(args.calm)
        rss_before = running.rss_bytes()
        retrain_start = time.perf_counter() - began
        assert httpx.post(f"{running.url}/api/v1/retrain", timeout=10).status_code == 200
        rss_peak = _wait_idle_tracking_memory(running)
        retrain_end = time.perf_counter() - began
        time.sleep(args.calm)
        rss_after = running.rss_bytes()
        stop.set()
        loader.join()
    swap = min((s.sent for s in samples if s.version and s.version != samples[0].version), default=retrain_end)
    rows = _phase_rows(samples, retrain_start, retrain_end)
    idle_p99 = float(rows[0][6])  # type: ignore[arg-type]
    during_p99 = float(rows[1][6])  # type: ignore[arg-type]
    marks = [(retrain_start, "retrain start", "#e0a030"), (swap, "swap", "green"), (retrain_end, "end", "gray")]
    _chart(samples, marks)
    notes = (
        f"{args.rate:.0f} requests/s through Envoy, retrain of {retrain_end - retrain_start:.1f} s (start "
        f"{retrain_start:.1f} s, swap {swap:.1f} s, end {retrain_end:.1f} s). p99 during / idle p99: "
        f"{during_p99 / idle_p99:.2f} (target at most 1.5). Server memory: {rss_before / 2**20:.0f} MiB before, "
        f"{rss_peak / 2**20:.0f} MiB at the peak of the swap, {rss_after / 2**20:.0f} MiB after.\n\n"
        "![latency over time](zero_downtime.png)"
    )
    write_results(
        "zero_downtime",
        "Zero downtime: Recommend through Envoy during a retrain",
        ["phase", "requests", "non-200", "timeouts", "p50 ms", "p95 ms", "p99 ms"],
        rows,
        notes,
    )
    return 0


def _phase_rows(samples: list[Sample], retrain_start: float, retrain_end: float) -> list[list[object]]:
    """Per phase (before, during, after the retrain): requests, non-200s, timeouts, p50, p95, p99."""
    phases = {
        "before": [s for s in samples if s.sent < retrain_start],
        "during": [s for s in samples if retrain_start <= s.sent < retrain_end],
        "after": [s for s in samples if s.sent >= retrain_end],
    }
    rows: list[list[object]] = []
    for phase, chosen in phases.items():
        p50, p95, p99 = percentiles([s.latency for s in chosen if s.status == 200])
        failures = sum(1 for s in chosen if s.status not in (200, 0))
        timeouts = sum(1 for s in chosen if s.status == 0)
        rows.append([phase, len(chosen), failures, timeouts, p50, p95, p99])
    return rows


def _chart(samples: list[Sample], marks: list[tuple[float, str, str]]) -> None:
    answered, failed = [s for s in samples if s.status == 200], [s for s in samples if s.status != 200]
    latency_chart(
        "zero_downtime",
        "Recommend through Envoy during a retrain",
        "seconds",
        [
            ("200", [s.sent for s in answered], [s.latency * 1000 for s in answered], "#3b6ea8", 3.0),
            ("error", [s.sent for s in failed], [s.latency * 1000 for s in failed], "red", 12.0),
        ],
        marks,
    )


def _wait_idle_tracking_memory(running: Server) -> int:
    """Waits for the retrain to end; returns the server's peak resident memory meanwhile."""
    peak = running.rss_bytes()
    time.sleep(0.5)
    while running.health().get("status") != "ok":
        peak = max(peak, running.rss_bytes())
        time.sleep(0.1)
    return peak


if __name__ == "__main__":
    raise SystemExit(main())
