"""What filters cost a Recommend at 10,000 books: the model's maths (the mask from the books' facts, the ranking
and `because` of ten books, one thread) for known readers, unfiltered and with each kind of filter, on the demo
catalogue and on the Goodreads sample (real genres and years).

    python -m bench.filters_cost [--readers 500]

Writes bench/results/filters_cost.md and .csv.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from bench import convert
from bench.harness import write_results
from recommender.model.answers import Request
from recommender.model.dataset import TrainingData
from recommender.model.filters import NO_FILTERS, BookFacts, Facts, Filters
from recommender.model.fit import train
from recommender.model.hybrid import HybridModel
from recommender.model.params import TrainingParams
from recommender.model.recommend import recommend_many
from recommender.model.warm import warm
from recommender.storage import demo

COLUMNS = ["data", "filter", "p50 ms", "p99 ms", "x unfiltered p50", "books matching"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readers", type=int, default=500)
    args = parser.parse_args()
    rows: list[list[object]] = []
    for name in ("demo", "goodbooks"):
        if name == "demo":
            catalogue = demo.generate(42, 10_000, 20_000, 400_000)
            data = TrainingData.from_interactions(catalogue.books, catalogue.interactions)
        else:
            data = convert.training_data("goodbooks")
        model = train(data, TrainingParams())
        warm(model)
        facts = BookFacts.of(data.books).over(model.catalogue.book_ids)
        readers = np.random.default_rng(1).choice(model.cf.user_ids, args.readers, replace=False).tolist()
        cases = _cases(_common_genres(facts))
        timed = _timed(model, facts, readers, list(cases.values()))
        base = timed[0][0]
        for label, (p50, p99, matching) in zip(cases, timed, strict=True):
            rows.append([name, label, p50, p99, f"{p50 / base:.2f}", matching])
            print(rows[-1], flush=True)
    write_results(
        "filters_cost",
        "What filters cost a Recommend at 10,000 books (model maths, one thread, in process)",
        COLUMNS,
        rows,
        "Known readers, limit 10, with `because`; the mask built from the books' facts is included. Books matching: "
        "the median over the readers of the books the filter allows.",
    )
    return 0


def _cases(genres: list[str]) -> dict[str, Callable[[int], Filters]]:
    """Each kind of filter, varied by reader."""
    return {
        "none": lambda _u: NO_FILTERS,
        "one common genre": lambda u: Filters(genres=(genres[u % 3],)),
        "a rare genre": lambda u: Filters(genres=(genres[-1 - u % 3],)),
        "years 1990-1999": lambda _u: Filters(min_year=1990, max_year=1999),
        "20 books excluded": lambda u: Filters(exclude=tuple(range(u % 50 + 1, u % 50 + 21))),
        "at most 2 per author": lambda _u: Filters(max_per_author=2),
        "genre, years, exclude, 2 per author": lambda u: Filters(
            genres=(genres[u % 3],), exclude=(1, 2, 3), min_year=1950, max_year=2020, max_per_author=2
        ),
    }


def _common_genres(facts: Facts) -> list[str]:
    by_size = sorted(facts.genre_books, key=lambda g: -len(facts.genre_books[g]))
    return by_size[:3] + [g for g in by_size if len(facts.genre_books[g]) >= 20][-3:]


def _timed(
    model: HybridModel, facts: Facts, readers: list[int], cases: list[Callable[[int], Filters]]
) -> list[tuple[float, float, int]]:
    """p50 and p99 ms and the median of the books allowed, per case; every reader runs every case in turn (so
    that what else the machine does falls on all alike), after one warm-up round."""
    spent: list[list[float]] = [[] for _ in cases]
    matching: list[list[int]] = [[] for _ in cases]
    with threadpool_limits(1, "blas"):
        for round_ in range(2):
            for user in readers:
                for i, filters_of in enumerate(cases):
                    filters = filters_of(user)
                    started = time.perf_counter()
                    allowed = facts.allowed(filters)
                    recommend_many(model, [Request(user, 10, None, allowed, filters.max_per_author)])
                    if round_:
                        spent[i].append(time.perf_counter() - started)
                        matching[i].append(model.num_books if allowed is None else int(allowed.sum()))
    found = []
    for times, allowed_counts in zip(spent, matching, strict=True):
        p50, p99 = np.percentile(np.asarray(times) * 1000, [50, 99])
        found.append((float(p50), float(p99), int(np.median(allowed_counts))))
    return found


if __name__ == "__main__":
    sys.exit(main())
