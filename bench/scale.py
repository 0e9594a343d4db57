"""The cost curve of a catalogue: Recommend at 10,000 / 100,000 / 1,000,000 demo books (20,000 readers, 400,000
interactions, tuning off, so that only the catalogue changes), with the service's default settings.

For each size, the real service (`python server.py`, first model trained on start-up, kept in bench/.work/):
- p50/p90/p99 of `GET /api/v1/recommendations` through Envoy with wrk, one connection, known readers (the run with
  the better p50 of two);
- recall@10 of the lists served over HTTP to 2,000 readers against the exact ranking (every book scored in float64;
  the exhaustive product's 50 best, re-scored exactly, taken as the truth);
- in-process, the model maths of one request (`recommend`, with `because`) with and without the catalogue index;
- the serving process's memory, the version's size on disk (and its index's), and what building the index takes
  against the whole first training.

    python -m bench.scale [--sizes 10000,100000,1000000] [--seconds 20] [--fresh]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from bench.harness import RESULTS, WORK, Size, percentiles, service, write_results
from bench.serving import wrk_load
from recommender.model.growth import with_index
from recommender.model.hybrid import HybridModel
from recommender.model.params import IndexParams
from recommender.model.ranking import scored
from recommender.model.readers import reader_of
from recommender.model.recommend import query_for, recommend
from recommender.model.shortlist import exact_top
from recommender.storage.artifacts import LocalArtifactStore

READERS, INTERACTIONS = 20_000, 400_000
RECALL_READERS = 2_000
TRUTH_FETCHED = 50  # the exhaustive product's best, re-scored in float64: its rounding cannot reorder beyond these
COLUMNS = [
    "books",
    "index",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "requests/s",
    "recall@10",
    "maths p50 ms (index)",
    "maths p50 ms (exhaustive)",
    "server RSS MiB",
    "version MiB",
    "index MiB",
    "index build s",
    "first training s",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--fresh", action="store_true", help="generate and train again instead of reusing bench/.work")
    args = parser.parse_args()
    rows = [measure(int(books), args.seconds, args.fresh) for books in args.sizes.split(",")]
    write_results(
        "scale",
        "Recommend by catalogue size (demo data, 20,000 readers, 400,000 interactions, tuning off, default settings)",
        COLUMNS,
        rows,
        "Latency: wrk through Envoy, one connection, known readers, limit 10. Recall@10: lists served over HTTP to "
        f"{RECALL_READERS:,} readers against the exact ranking. Maths: one `recommend()` with `because`, in-process.",
    )
    chart(rows)
    return 0


def measure(books: int, seconds: float, fresh: bool) -> list[object]:
    size = Size(books, READERS, INTERACTIONS)
    if fresh:
        shutil.rmtree(WORK / size.name, ignore_errors=True)
    with service(size, TUNING="off") as running:
        wrk_load(running.url, "known", READERS, 5, 1)  # warm-up
        # The better of two runs: runs on this machine differ by 10-20% at p50 (what else the two cores do).
        rate, p50, p90, p99 = min((wrk_load(running.url, "known", READERS, seconds, 1) for _ in range(2)), key=p50_of)
        rss = running.rss_bytes() / 2**20
        readers = np.random.default_rng(books).choice(np.arange(1, READERS + 1), RECALL_READERS, replace=False)
        served, version = served_lists(running.url, readers)
    folder = WORK / size.name / "artifacts"
    model = LocalArtifactStore(folder).read(version)
    files = next(path for path in folder.rglob("manifest.json") if path.parent.name == version).parent
    on_disk = sum(path.stat().st_size for path in files.iterdir()) / 2**20
    index_file = files / "index.npz"
    index_mib = index_file.stat().st_size / 2**20 if index_file.exists() else 0.0
    recall = recall_at_10(model, readers, served)
    exhaustive = dataclasses.replace(model, index=None)
    sample = [int(u) for u in readers[:300]]
    maths_index = maths_p50(model, sample) if model.index is not None else float("nan")
    maths_exhaustive = maths_p50(exhaustive, sample)
    started = time.perf_counter()
    with_index(exhaustive, dataclasses.replace(IndexParams(), min_books=0))
    build = time.perf_counter() - started
    row: list[object] = [books, model.index is not None, p50, p90, p99, rate, f"{recall:.4f}"]
    row += [maths_index, maths_exhaustive, rss, on_disk, index_mib, build, model.meta.training_seconds]
    print(row, flush=True)
    return row


def p50_of(run: tuple[float, float, float, float]) -> float:
    return run[1]


def served_lists(url: str, readers: np.ndarray) -> tuple[dict[int, list[int]], str]:
    """What the service answers each reader (book ids), and the one version that answered."""
    lists: dict[int, list[int]] = {}
    versions = set()
    with httpx.Client(base_url=url, timeout=30) as http:
        for user in readers.tolist():
            body = http.get("/api/v1/recommendations", params={"user_id": user, "limit": 10}).raise_for_status().json()
            lists[user] = [book["book_id"] for book in body["recommendations"]]
            versions.add(body["model_version"])
    if len(versions) != 1:
        raise SystemExit(f"several versions answered: {versions}")
    return lists, versions.pop()


def recall_at_10(model: HybridModel, readers: np.ndarray, served: dict[int, list[int]]) -> float:
    exhaustive = dataclasses.replace(model, index=None)
    hits = total = 0
    for start in range(0, len(readers), 16):
        users = [int(u) for u in readers[start : start + 16]]
        queries = [query_for(exhaustive, reader_of(exhaustive, user)) for user in users]
        fetched = exact_top(exhaustive.rows, queries, [TRUTH_FETCHED] * len(queries))
        for user, q, best in zip(users, queries, fetched, strict=True):
            truth = set(model.catalogue.book_ids[scored(exhaustive.rows, q, best).positions[:10]].tolist())
            hits += len(truth & set(served[user]))
            total += len(truth)
    return hits / total


def maths_p50(model: HybridModel, readers: list[int]) -> float:
    recommend(model, readers[0], 10)  # the first call builds the cached rows
    times = []
    for user in readers:
        started = time.perf_counter()
        recommend(model, user, 10)
        times.append(time.perf_counter() - started)
    return percentiles(times)[0]


def chart(rows: list[list[object]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    books = [float(r[0]) for r in rows]  # type: ignore[arg-type]
    figure, axis = plt.subplots(figsize=(7, 4))
    lines = [
        (2, "served p50 (through Envoy)", "tab:blue", "-"),
        (4, "served p99 (through Envoy)", "tab:blue", ":"),
        (7, "model maths, catalogue index", "tab:green", "-"),
        (8, "model maths, every book scored", "tab:red", "--"),
    ]
    for column, label, colour, style in lines:
        points = [(b, float(r[column])) for b, r in zip(books, rows, strict=True) if r[column] == r[column]]  # type: ignore[arg-type]
        axis.plot(*zip(*points, strict=True), marker="o", color=colour, linestyle=style, label=label)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("books in the catalogue")
    axis.set_ylabel("ms per Recommend (limit 10)")
    axis.set_title("The cost of a catalogue (2 cores, one connection)")
    axis.legend(loc="upper left", fontsize=8)
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    path = RESULTS / "scale.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


if __name__ == "__main__":
    sys.exit(main())
