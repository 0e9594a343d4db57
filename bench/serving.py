"""Serving throughput and latency: `.venv/bin/python -m bench.serving [--seconds 10] [--connections 16]`.

Recommend for known users, unknown users (popular books) and Health (no work: the baseline), through gRPC (an
asyncio client keeping `connections` calls in flight) and through Envoy (wrk, Debian's package), and known users
through Envoy at one connection (the latency a lone client sees), against one server over the 10,000-book /
50,000-user / 1,000,000-interaction demo catalogue. Writes bench/results/serving.*.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import grpc

from bench.harness import MEDIUM, percentiles, service, write_results
from recommender.v1 import recommender_pb2 as pb
from recommender.v1 import recommender_pb2_grpc as pb_grpc

WRK_SCRIPT = """
math.randomseed(os.time())
request = function()
  local id = math.random(%(low)d, %(high)d)
  return wrk.format("GET", "%(path)s" .. id .. "&limit=10")
end
"""


async def grpc_load(target: str, kind: str, users: int, seconds: float, connections: int) -> tuple[float, list[float]]:
    """Requests per second and latencies of `kind` ("health", "known", "unknown") over gRPC."""
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                if kind == "health":
                    await stub.Health(pb.HealthRequest())
                else:
                    user = random.randint(1, users) if kind == "known" else random.randint(10**8, 2 * 10**8)
                    await stub.Recommend(pb.RecommendRequest(user_id=user, limit=10))
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies


def wrk_load(url: str, kind: str, users: int, seconds: float, connections: int) -> tuple[float, float, float, float]:
    """Requests per second and p50/p90/p99 (ms) through Envoy, from wrk's --latency report."""
    wrk = shutil.which("wrk")
    assert wrk, "wrk is needed: apt-get install wrk"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if kind == "health":
            script.write('request = function() return wrk.format("GET", "/api/v1/health") end\n')
        else:
            low, high = (1, users) if kind == "known" else (10**8, 2 * 10**8)
            script.write(WRK_SCRIPT % {"low": low, "high": high, "path": "/api/v1/recommendations?user_id="})
    output = subprocess.run(
        [wrk, f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds:.0f}s", "--latency", "-s", script.name, url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    Path(script.name).unlink()
    if "Non-2xx" in output:
        raise SystemExit(f"errors through Envoy:\n{output}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]
    marks = {m[0]: _ms(m[1]) for m in re.findall(r"^\s+(50|90|99)%\s+([\d.]+\w+)", output, re.MULTILINE)}
    return rate, marks["50"], marks["90"], marks["99"]


def _ms(text: str) -> float:
    value, unit = float(re.match(r"[\d.]+", text)[0]), re.sub(r"[\d.]+", "", text)  # type: ignore[index]
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, help="RECOMMENDER_WORKERS (default: the service's, one per core)")
    args = parser.parse_args()
    rows: list[list[object]] = []
    workers = {} if args.workers is None else {"WORKERS": str(args.workers)}
    with service(MEDIUM, **workers) as running:
        rates: dict[tuple[str, str], float] = {}
        for kind in ("health", "known", "unknown"):
            rate, latencies = asyncio.run(
                grpc_load(running.grpc_target, kind, MEDIUM.users, args.seconds, args.connections)
            )
            p50, p95, p99 = percentiles(latencies)
            rates["grpc", kind] = rate
            rows.append(["gRPC", kind, rate, p50, p95, p99])
        for kind in ("health", "known", "unknown"):
            rate, p50, p90, p99 = wrk_load(running.url, kind, MEDIUM.users, args.seconds, args.connections)
            rates["envoy", kind] = rate
            rows.append(["Envoy (wrk)", kind, rate, p50, p90, p99])
        rate, p50, p90, p99 = wrk_load(running.url, "known", MEDIUM.users, args.seconds, 1)
        rows.append(["Envoy (wrk), 1 connection", "known", rate, p50, p90, p99])
    notes = (
        f"{args.connections} connections (one where shown), {args.seconds:.0f} s each, limit 10, catalogue "
        f"{MEDIUM.name}, {args.workers or 'one per core (the default)'} serving process(es); client and "
        "server share the machine. For wrk the middle column is p90 (what it reports), for gRPC p95.\n\n"
        f"Recommend (known users) / Health through Envoy: {rates['envoy', 'known'] / rates['envoy', 'health']:.2f} "
        f"(target 0.5); through gRPC: {rates['grpc', 'known'] / rates['grpc', 'health']:.2f}."
    )
    write_results(
        "serving" if args.workers is None else f"serving-{args.workers}-workers",
        "Serving: requests per second and latency",
        ["path", "call", "requests/s", "p50 ms", "p95 (p90) ms", "p99 ms"],
        rows,
        notes,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
