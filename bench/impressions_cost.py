"""What recording impressions costs a Recommend call: p50 (and p99, and requests/s) through Envoy with wrk at one
connection and at 16, with RECOMMENDER_IMPRESSIONS on and off, alternating twice so that drift shows.

    .venv/bin/python -m bench.impressions_cost [--seconds 20]

At 10,000 books / 50,000 users / 1,000,000 interactions (the catalogue of bench.serving, created once under
bench/.work/). Results: bench/results/impressions_cost.md and .csv.
"""

from __future__ import annotations

import argparse
import sys

import httpx

from bench.harness import MEDIUM, service, write_results
from bench.serving import wrk_load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    rows: list[list[object]] = []
    p50s: dict[str, list[float]] = {"on": [], "off": []}
    for _round in range(2):
        for setting in ("on", "off"):
            with service(MEDIUM, IMPRESSIONS="true" if setting == "on" else "false") as running:
                wrk_load(running.url, "known", MEDIUM.users, 5, 1)  # warm-up
                for connections in (1, 16):
                    rate, p50, p90, p99 = wrk_load(running.url, "known", MEDIUM.users, args.seconds, connections)
                    rows.append([setting, connections, rate, p50, p90, p99])
                    if connections == 1:
                        p50s[setting].append(p50)
                written = _impressions_written(running.metrics_url())
                rows[-1].append(written)
                rows[-2].append(written)
                print(rows[-2], rows[-1], flush=True)
    on, off = sorted(p50s["on"])[0], sorted(p50s["off"])[0]
    write_results(
        "impressions_cost",
        "What recording impressions costs a Recommend call (wrk through Envoy, known users, limit 10)",
        ["impressions", "connections", "requests/s", "p50 ms", "p90 ms", "p99 ms", "impressions written"],
        rows,
        f"Best p50 at one connection: {on:.3f} ms with impressions, {off:.3f} ms without "
        f"({100 * (on / off - 1):+.1f}%).",
    )
    return 0


def _impressions_written(metrics_url: str) -> float:
    for line in httpx.get(metrics_url, timeout=10).text.splitlines():
        if line.startswith('recommender_impressions_total{result="written"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


if __name__ == "__main__":
    sys.exit(main())
