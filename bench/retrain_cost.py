"""What a retrain costs, by stage: `.venv/bin/python -m bench.retrain_cost [--sizes 100000,1000000,5000000]`.

For each size (10,000 books; 20 interactions per user) the real service retrains once and its Prometheus metrics
give the seconds of each stage; beside them, in the same run, the raw `implicit` ALS fit and the raw TF-IDF fit on
the same data, and the server's resident memory after the swap. Writes bench/results/retrain_cost.*.
"""

from __future__ import annotations

import argparse
import re
import time

import httpx
from threadpoolctl import threadpool_limits

from bench.harness import Size, service, write_results
from recommender.model import cf, content
from recommender.model.dataset import TrainingData
from recommender.storage import demo
from recommender.training.progress import STAGES

BOOKS = 10_000


def stage_seconds(metrics_url: str) -> dict[str, float]:
    text = httpx.get(metrics_url, timeout=10).text
    found = re.findall(r'recommender_retrain_stage_seconds_sum\{stage="(\w+)"\} ([\d.e+-]+)', text)
    return {stage: float(value) for stage, value in found}


def raw_fits(size: Size) -> tuple[float, float]:
    """Seconds of implicit's ALS fit (the service's default knobs, one thread) and of the TF-IDF fit."""
    catalogue = demo.generate(42, size.books, size.users, size.interactions)
    data = TrainingData.from_interactions(catalogue.books, catalogue.interactions)
    started = time.perf_counter()
    content.fit(catalogue.books, 10_000)
    tfidf = time.perf_counter() - started
    with threadpool_limits(1, "blas"):
        started = time.perf_counter()
        cf.fit(data, cf.ALSParams())
        als = time.perf_counter() - started
    return als, tfidf


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000,5000000")
    args = parser.parse_args()
    rows: list[list[object]] = []
    for interactions in (int(n) for n in args.sizes.split(",")):
        size = Size(BOOKS, max(interactions // 20, 100), interactions)
        with service(size) as running:
            metrics_url = running.metrics_url()
            before = stage_seconds(metrics_url)
            started = time.perf_counter()
            assert httpx.post(f"{running.url}/api/v1/retrain", timeout=10).status_code == 200
            time.sleep(0.5)
            running.wait_idle()
            total = time.perf_counter() - started
            after = stage_seconds(metrics_url)
            rss = running.rss_bytes()
        stages = {stage: after.get(stage, 0.0) - before.get(stage, 0.0) for stage in STAGES}
        als, tfidf = raw_fits(size)
        rows.append([interactions, total, *stages.values(), als, tfidf, rss / 2**20])
    write_results(
        "retrain_cost",
        "Retrain cost by stage, next to the raw fits",
        ["interactions", "retrain s", *(f"{stage} s" for stage in STAGES), "raw ALS fit s", "raw TF-IDF fit s",
         "server RSS MiB"],
        rows,
        "Stages: loading (database snapshot), content (TF-IDF and its SVD), evaluating (split, tuning within "
        "RECOMMENDER_TUNING_SECONDS, the active configuration and the parts on the split), cf (the final ALS fit on "
        "all data), saving (artifact, load back, registry), swapping (warm and switch). Retrain seconds include "
        "the child process's start.",
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
