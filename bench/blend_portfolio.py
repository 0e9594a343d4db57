"""How the search's blend portfolio (training/tuning.py's BLEND_PORTFOLIO) is chosen: the blends a search measures
first on its best fit, so that its Nelder-Mead starts where blends on other data did best.

On each public data set (the Goodreads sample, its 2,880 described books, MovieLens), split seed 7 (a seed the
targets in bench/search.py never use), the first configuration of the PORTFOLIO is fitted and its blend searched
with PASSES ranking passes from the configured blend (training/tuning.py's `best_blend`, the same floors as a
search). The best blend of each data set is one entry.

    python -m bench.blend_portfolio

Prints the BLEND_PORTFOLIO to paste, and writes bench/results/blend_portfolio.md.
"""

from __future__ import annotations

import sys

from bench import convert
from bench.harness import write_results
from recommender.model.evaluation import split
from recommender.model.fit import fit_content
from recommender.model.params import SplitParams, TrainingParams
from recommender.training.blends import PARTS_AS_BLENDS, best_blend, blend_floor
from recommender.training.trials import fit_and_measure
from recommender.training.tuning import PORTFOLIO

DATA_SETS = ("goodbooks", "goodbooks-described", "movielens")
SEED = 7
PASSES = 100


def main() -> int:
    params = TrainingParams().with_values(PORTFOLIO[0])
    rows: list[list[object]] = []
    for name in DATA_SETS:
        data = convert.training_data(name)
        the_split = split(data, SplitParams(seed=SEED))
        fitted = fit_and_measure(the_split, params, fit_content(data.books, params), lambda: False, parts=True)
        start = (params.alpha, params.popularity_prior, params.cf_prior)
        known = [start, *PARTS_AS_BLENDS]
        chosen = best_blend(fitted, the_split, blend_floor(fitted, the_split), known, PASSES, float("inf"))
        p, m = chosen.params, chosen.metrics
        blend = [f"{p.alpha:.3g}", f"{p.popularity_prior:.3g}", f"{p.cf_prior:.3g}"]
        fitted_ndcg = [f"{fitted.metrics.ndcg:.4f}", f"{fitted.metrics.ndcg_cold:.4f}"]
        rows.append([name, *blend, f"{m.ndcg:.4f}", f"{m.ndcg_cold:.4f}", *fitted_ndcg])
        print(rows[-1], flush=True)
    write_results(
        "blend_portfolio",
        "The search's blend portfolio: the best blend per public data set (bench/blend_portfolio.py)",
        ["data", "alpha", "popularity prior", "CF prior", "NDCG@10", "cold", "configured blend", "its cold"],
        rows,
        f"The first PORTFOLIO configuration fitted on split seed {SEED}; its blend searched with {PASSES} ranking "
        "passes (Nelder-Mead from the configured blend, the search's floors). Cold: readers cut to 3 books.",
    )
    print("BLEND_PORTFOLIO = (")
    for row in rows:
        print(f"    ({row[1]}, {row[2]}, {row[3]}),  # {row[0]}")
    print(")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
