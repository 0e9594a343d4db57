"""What the default search releases, and whether the machine's speed could change it: on the Goodreads sample and
MovieLens, two split seeds each, the first version's search with default settings (no serving budget, no time
cap), its choice then fitted on another split of the same data (split seed + 100: other held-out books, none of
which the search measured) and compared there with implicit's ALS with library defaults.

    python -m bench.portable_search [--seeds 1,2] [--data goodbooks,movielens]

Writes bench/results/portable_search.md and .csv. Nothing the search decides reads a clock (tests/test_search.py
holds it: the same data and seed release the same configuration with every timing three times slower), so the
chosen configuration and its figures are the same on any machine; only the seconds column moves.
"""

from __future__ import annotations

import time

from bench import convert
from bench.harness import write_results
from recommender.model.evaluation import split
from recommender.model.params import SplitParams, TrainingParams, TuningPolicy
from recommender.training.compare import library_defaults
from recommender.training.costs import request_cost, typical_history
from recommender.training.trials import fit_and_measure
from recommender.training.tuning import Search, tune

OTHER_SPLIT = 100  # the split the choice is measured on: seed + this

COLUMNS = [
    "data", "seed", "chosen", "M multiply-adds a request", "NDCG@10 (other split)", "ALS defaults",
    "served / ALS defaults", "cold: served", "cold: ALS defaults", "search s",
]  # fmt: skip


def main() -> int:
    prepared, seeds = convert.split_arguments(__doc__)
    params = TrainingParams()
    rows: list[list[object]] = []
    for name, data, content in prepared:
        for seed in seeds:
            started = time.perf_counter()
            best, _tried = tune(split(data, SplitParams(seed=seed)), params, content, Search.of(TuningPolicy(), seed))
            seconds = time.perf_counter() - started
            other = split(data, SplitParams(seed=seed + OTHER_SPLIT))
            served = fit_and_measure(other, best.params, content, lambda: False)
            als = library_defaults(other, served.model, SplitParams().like_threshold).metrics
            m = served.metrics
            rows.append([
                name, seed, f"{best.params.als.factors} factors, alpha {best.params.alpha:.2f}",
                f"{request_cost(served.model, typical_history(other)):.1f}", f"{m.ndcg:.4f}", f"{als.ndcg:.4f}",
                f"{m.ndcg / als.ndcg:.3f}", f"{m.ndcg_cold:.4f}", f"{als.ndcg_cold:.4f}", round(seconds),
            ])  # fmt: skip
            print(rows[-1], flush=True)
    write_results(
        "portable_search",
        "What the default search releases, measured on a split it never saw (bench/portable_search.py)",
        COLUMNS,
        rows,
        "Default search: RECOMMENDER_TUNING_TRIALS=20 full fits' worth, fits judged early, the portfolio first, no "
        f"serving budget, no time cap. Its choice refitted on split seed + {OTHER_SPLIT} and measured there beside "
        "implicit's AlternatingLeastSquares(random_state=42) on binary 4-star-and-up positives. Cold: readers cut to "
        "3 books. A request's cost: model/cost.py.",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
