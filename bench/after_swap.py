"""Latency right after a start and right after a swap: `.venv/bin/python -m bench.after_swap [--connections 2]`.

wrk keeps `connections` Recommend calls in flight through Envoy (random known users, limit 10) from the moment the
service answers until 30 s after a retrain's swap, each request's send time and latency written down (wrk's LuaJIT
reads the monotonic clock). The minute before the retrain, 5,000 users each record a book through the API, as a live
catalogue's readers do: with a wall-clock margin around the snapshot they would all be folded in after the swap.
p99 of the first 30 s after start-up, of the steady 30 s after that, during the retrain and of the 30 s after the
swap, against the steady p99; a PNG of latency over time; how many users the served version had to fold in, from
the service's metrics. Writes bench/results/after_swap.*, on the 10,000-book / 50,000-user / 1M-interaction catalogue.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx

from bench.harness import MEDIUM, latency_chart, percentiles, service, write_results
from bench.servers import Server
from recommender.v1 import recommender_pb2 as pb
from recommender.v1 import recommender_pb2_grpc as pb_grpc

WINDOW = 30.0  # seconds: the first half-minute after a start or a swap, and the steady half-minute compared
CHURN_USERS = 5_000

WRK_SCRIPT = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock, bench_timespec *now);
]]
local clock = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC, Python's time.monotonic()
  return tonumber(clock.tv_sec) + tonumber(clock.tv_nsec) * 1e-9
end
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
function init(args)
  math.randomseed(id * 7919 + os.time())
  out = io.open("%(folder)s/thread-" .. id .. ".txt", "w")
  out:setvbuf("line")
end
function request()
  sent = now()
  return wrk.format("GET", "/api/v1/recommendations?user_id=" .. math.random(1, %(users)d) .. "&limit=10")
end
function response(status, headers, body)
  out:write(string.format("%%.6f %%.6f %%d\\n", sent, now() - sent, status))
end
"""


@dataclass(frozen=True)
class Sample:
    sent: float  # seconds, on the measuring bench's clock
    latency: float
    status: int


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=2)
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    assert wrk, "wrk is needed: apt-get install wrk"
    folder = Path(tempfile.mkdtemp(prefix="after-swap-"))
    script = folder / "load.lua"
    script.write_text(WRK_SCRIPT % {"folder": folder, "users": MEDIUM.users}, encoding="utf-8")
    with service(MEDIUM) as running:
        ready = time.monotonic()
        load = subprocess.Popen(
            [wrk, f"-t{args.connections}", f"-c{args.connections}", "-d3600s", "-s", str(script), running.url],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(2 * WINDOW)
            _churn(running.url)
            retrain = time.monotonic()
            assert httpx.post(f"{running.url}/api/v1/retrain", timeout=10).status_code == 200
            swap = _wait_for_swap(running)
            folded_in = _users_newer_than_model(running)
            time.sleep(max(0.0, swap + WINDOW - time.monotonic()) + 1.0)
        finally:
            load.send_signal(signal.SIGINT)
            load.wait(30)
    samples = [_sample(line) for path in folder.glob("thread-*.txt") for line in path.read_text().splitlines()]
    shutil.rmtree(folder)
    windows = {
        "first 30 s after start-up": (ready, ready + WINDOW),
        "steady (the next 30 s)": (ready + WINDOW, ready + 2 * WINDOW),
        "during the retrain": (retrain, swap),
        "first 30 s after the swap": (swap, swap + WINDOW),
    }
    rows = _window_rows(samples, windows)
    steady = float(rows[1][5])  # type: ignore[arg-type]
    ratios = ", ".join(f"{row[0]} {float(row[5]) / steady:.2f}" for row in rows if row[0] != rows[1][0])  # type: ignore[arg-type]
    latency_chart(
        "after_swap",
        "Recommend through Envoy at 2 connections: after start-up, during a retrain, after the swap",
        "seconds since the service answered",
        [("Recommend", [s.sent - ready for s in samples], [s.latency * 1000 for s in samples], "#3b6ea8", 1.0)],
        [(WINDOW, "steady from", "gray"), (retrain - ready, "retrain", "#e0a030"), (swap - ready, "swap", "green")],
    )
    notes = (
        f"{args.connections} connections (wrk, closed loop) through Envoy; retrain of {swap - retrain:.1f} s, started "
        f"after {CHURN_USERS:,} users each recorded a book. p99 / steady p99: {ratios} (target at most 1.5 each). "
        f"Users the new version folded in after its swap (recommender_users_newer_than_model): {folded_in}.\n\n"
        "![latency over time](after_swap.png)"
    )
    write_results(
        "after_swap",
        "Latency after a start and after a swap: Recommend through Envoy",
        ["window", "requests", "non-200", "p50 ms", "p95 ms", "p99 ms"],
        rows,
        notes,
    )
    return 0


def _window_rows(samples: list[Sample], windows: dict[str, tuple[float, float]]) -> list[list[object]]:
    """Per window: requests, non-200s, p50, p95, p99."""
    rows: list[list[object]] = []
    for name, (start, end) in windows.items():
        chosen = [s for s in samples if start <= s.sent < end]
        p50, p95, p99 = percentiles([s.latency for s in chosen if s.status == 200])
        rows.append([name, len(chosen), sum(1 for s in chosen if s.status != 200), p50, p95, p99])
    return rows


def _churn(url: str) -> None:
    """CHURN_USERS known users each record one book, in the API's batches of 1,000."""
    rng = random.Random(7)
    users = rng.sample(range(1, MEDIUM.users + 1), CHURN_USERS)
    for start in range(0, len(users), 1000):
        entries = [
            {"user_id": u, "book_id": rng.randint(1, MEDIUM.books), "rating": 5} for u in users[start : start + 1000]
        ]
        response = httpx.post(f"{url}/api/v1/interactions", json={"interactions": entries}, timeout=60)
        assert response.status_code == 200, response.text


def _wait_for_swap(running: Server) -> float:
    """When the served version changed (gRPC ModelInfo, polled every 50 ms)."""
    with grpc.insecure_channel(running.grpc_target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        before = stub.ModelInfo(pb.ModelInfoRequest()).version
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            if stub.ModelInfo(pb.ModelInfoRequest()).version != before:
                return time.monotonic()
            time.sleep(0.05)
    raise SystemExit("no swap within half an hour")


def _users_newer_than_model(running: Server, settle: float = 5.0) -> float:
    """The gauge, once the new version's fresh-data sync has had `settle` seconds."""
    time.sleep(settle)
    for line in httpx.get(running.metrics_url(), timeout=5).text.splitlines():
        if line.startswith("recommender_users_newer_than_model "):
            return float(line.split()[1])
    return float("nan")


def _sample(line: str) -> Sample:
    sent, latency, status = line.split()
    return Sample(float(sent), float(latency), int(status))


if __name__ == "__main__":
    raise SystemExit(main())
