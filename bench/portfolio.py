"""How the search's portfolio (training/tuning.py's PORTFOLIO) is chosen: the configurations a search tries before
its sampler proposes, so that the first minutes of a search on data nobody tuned for are spent where searches on
other data found the best.

1. On each public data set (the Goodreads sample, its 2,880 described books, MovieLens), a 60-fit search of the
   plain kind (every fit in full, no portfolio, no serving budget) on split seed 7: a seed the targets in
   bench/search.py never use.
2. The best CANDIDATES finished fits of each search with at most MOST_FACTORS factors (beyond it, a request at
   10,000 books costs more than any budget worth having), each measured on every data set (the same split), its
   cost per request (millions of multiply-adds, model/cost.py) shown for the two with 10,000 books (the Goodreads
   sample, MovieLens), the lower of the two.
3. A greedy choice of SIZE of them: each time the configuration that raises most the mean, over the data sets, of
   the best score among those chosen so far (relative to the best score seen on that data set), as auto-sklearn
   chooses its meta-learned starting points.

    python -m bench.portfolio

Prints the PORTFOLIO to paste, and writes bench/results/portfolio.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from typing import Any

from bench import convert
from bench.harness import WORK, write_results
from recommender.model.catalogue import Catalogue
from recommender.model.content import ContentModel
from recommender.model.evaluation import Split, split
from recommender.model.fit import fit_content
from recommender.model.params import SplitParams, TrainingParams
from recommender.training.costs import request_cost, typical_history
from recommender.training.trials import fit_and_measure
from recommender.training.tuning import Search, als_knobs, tune

CACHE = WORK / "portfolio_candidates.json"
DATA_SETS = ("goodbooks", "goodbooks-described", "movielens")
SEED = 7
CANDIDATES = 8
SIZE = 4
MOST_FACTORS = 320
COSTED = ("goodbooks", "movielens")  # the data sets of 10,000 books


Prepared = tuple[Split, tuple[Catalogue, ContentModel]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=60)
    args = parser.parse_args()
    params = TrainingParams()
    prepared: dict[str, Prepared] = {}
    candidates: list[dict[str, Any]] = []
    for name in DATA_SETS:
        data = convert.training_data(name)
        the_split = split(data, SplitParams(seed=SEED))
        prepared[name] = (the_split, fit_content(data.books, params))
        candidates += searched(name, the_split, prepared[name][1], args.trials)
    scores: list[dict[str, float]] = []
    kept: list[dict[str, Any]] = []
    costs: list[float] = []
    for knobs in candidates:
        measured, cost = {}, math.inf
        for name, (the_split, content) in prepared.items():
            trial = fit_and_measure(the_split, params.with_values(knobs), content, lambda: False)
            measured[name] = trial.score
            if name in COSTED:
                cost = min(cost, request_cost(trial.model, typical_history(the_split)))
        kept.append(knobs)
        scores.append(measured)
        costs.append(cost)
    chosen = greedy(scores, SIZE)
    rows = [
        [i + 1, *(_shown(kept[c][k]) for k in KNOBS), f"{costs[c]:.2f}", *(f"{scores[c][n]:.3f}" for n in DATA_SETS)]
        for i, c in enumerate(chosen)
    ]
    write_results(
        "portfolio",
        "The search's portfolio: configurations chosen across the public data sets (bench/portfolio.py)",
        ["order", *KNOBS, "M multiply-adds a request", *(f"score, {n}" for n in DATA_SETS)],
        rows,
        f"Score: log NDCG@10 + log NDCG@10 of readers with 3 books, split seed {SEED}; a request's cost: the lower "
        "of the Goodreads sample's and MovieLens's (10,000 books each). "
        f"Candidates: the best {CANDIDATES} fits with at most {MOST_FACTORS} factors of a {args.trials}-fit search "
        "on each data set.",
    )
    print("PORTFOLIO = (")
    for c in chosen:
        print(f"    {dataclasses.asdict(_Knobs(**kept[c]))},")
    print(")")
    return 0


def searched(name: str, the_split: Split, content: tuple[Catalogue, ContentModel], trials: int) -> list[dict[str, Any]]:
    """The best CANDIDATES fits with at most MOST_FACTORS factors of a plain search on this data set (kept in
    bench/.work: deterministic for the seed)."""
    kept = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    key = f"{name}/{SEED}/{trials}"
    if key not in kept:
        plain = Search(trials, 3600.0, SEED, blend=False, halving=False, portfolio=())
        _best, tried = tune(the_split, TrainingParams(), content, plain)
        print(f"{name}: searched, best {max(tried, key=lambda t: t.score).describe()}", flush=True)
        small = [t for t in tried if t.full and t.params.als.factors <= MOST_FACTORS]
        kept[key] = [als_knobs(t.params) for t in sorted(small, key=lambda t: -t.score)[:CANDIDATES]]
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        CACHE.write_text(json.dumps(kept, indent=1))
    return list(kept[key])


KNOBS = ["factors", "regularization", "iterations", "confidence", "rating_scale"]


@dataclasses.dataclass(frozen=True)
class _Knobs:
    factors: int
    regularization: float
    iterations: int
    confidence: float
    rating_scale: float

    def __post_init__(self) -> None:
        for name in ("regularization", "confidence", "rating_scale"):
            object.__setattr__(self, name, float(f"{getattr(self, name):.3g}"))


def greedy(scores: list[dict[str, float]], size: int) -> list[int]:
    """Indices of `size` configurations: each the one that raises most the mean over the data sets of the best
    relative score among those chosen (scores are logs: relative is the difference to the best seen)."""
    names = list(scores[0])
    best_seen = {n: max(s[n] for s in scores) for n in names}
    chosen: list[int] = []
    for _ in range(min(size, len(scores))):

        def gain(i: int) -> float:
            return sum(max(scores[j][n] - best_seen[n] for j in [*chosen, i]) for n in names) / len(names)

        chosen.append(max((i for i in range(len(scores)) if i not in chosen), key=gain))
    return chosen


def _shown(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    sys.exit(main())
