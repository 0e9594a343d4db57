"""What a reader's book signals cost a request's model maths: on the Goodreads sample (two split seeds), the
default fit with the signal weights its search chose there (author 1.5 and 1, held 0.5: bench/results/
book_signals.md), `recommend` of ten books with `because` for 1,000 readers, in process, against the same version
without the signals; and where the difference goes.

    python -m bench.signals_cost [--seeds 1,2]

Writes bench/results/signals_cost.md and .csv.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from threadpoolctl import threadpool_limits

from bench import convert
from bench.book_signals import TIMED_READERS
from bench.harness import write_results
from recommender.model.answering import best_books, reader_signals
from recommender.model.evaluation import split
from recommender.model.fit import fit_content
from recommender.model.hybrid import HybridModel
from recommender.model.params import SignalWeights, SplitParams, TrainingParams
from recommender.model.readers import reader_of
from recommender.model.recommend import query_for, recommend
from recommender.serving.versions import settle_memory
from recommender.training.trials import fit_and_measure

CHOSEN = {1: SignalWeights(1.5, 0.0, 0.5, True), 2: SignalWeights(1.0, 0.0, 0.5, True)}

COLUMNS = [
    "seed", "answer without signals, us", "answer with, us", "with / without", "the reader's signals, us",
    "the re-ranking (shortlist of 20, the reader's authors' books), us", "the blend's shortlist of 10, us",
]  # fmt: skip


def per_reader(work: Callable[[], object], count: int) -> float:
    work()
    started = time.perf_counter()
    work()
    return (time.perf_counter() - started) / count * 1e6


def alternating(first: Callable[[], object], second: Callable[[], object], count: int) -> tuple[float, float]:
    """Each one's best of three runs, taken in turns (the machine's pace drifts between minutes), us a reader."""
    runs: tuple[list[float], list[float]] = ([], [])
    for _ in range(3):
        for work, found in zip((first, second), runs, strict=True):
            found.append(per_reader(work, count))
    return min(runs[0]), min(runs[1])


def measured(model: HybridModel, seed: int) -> list[object]:
    """One row: `model` without signals and with the ones chosen on `seed`."""
    signalled, plain = model.with_signals(CHOSEN[seed]), model.with_signals(SignalWeights())
    users = [int(u) for u in model.cf.user_ids[:TIMED_READERS]]
    readers = [reader_of(model, u) for u in users]
    queries = [query_for(model, r) for r in readers]
    signals = reader_signals(signalled, readers)
    n = len(users)
    settle_memory()  # as a serving process does after a swap: the collector no longer walks the model
    without, with_signals = alternating(
        lambda: [recommend(plain, u, 10) for u in users], lambda: [recommend(signalled, u, 10) for u in users], n
    )
    return [
        seed,
        round(without),
        round(with_signals),
        f"{with_signals / without:.2f}",
        round(per_reader(lambda: reader_signals(signalled, readers), n)),
        round(per_reader(lambda: best_books(signalled, queries, [10] * n, signals=signals), n)),
        round(per_reader(lambda: best_books(plain, queries, [10] * n), n)),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2")
    args = parser.parse_args()
    data = convert.training_data("goodbooks")
    content = fit_content(data.books, TrainingParams())
    rows: list[list[object]] = []
    for seed in (int(s) for s in args.seeds.split(",")):
        fitted = fit_and_measure(split(data, SplitParams(seed=seed)), TrainingParams(), content, lambda: False)
        with threadpool_limits(1):  # as a serving process runs
            rows.append(measured(fitted.model, seed))
        print(rows[-1], flush=True)
    write_results(
        "signals_cost",
        "What a reader's book signals cost a request's model maths (bench/signals_cost.py)",
        COLUMNS,
        rows,
        f"Goodreads sample, the default fit (no search) on each split seed, {TIMED_READERS} readers as the version "
        "records them, one at a time, in process, one BLAS thread and the model settled out of the collector's "
        "generations (as a serving process runs); the answers with and without: each the best of three runs taken "
        "in turns.",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
