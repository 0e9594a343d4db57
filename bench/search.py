"""The default search against a long one: on the Goodreads sample and on MovieLens, three split seeds each, the
first model's search with default settings (fits judged early, the portfolio, no serving budget) against a
60-fit search of the plain kind (every fit in full, TPE alone), the plain 20-fit search the default used to be,
implicit's ALS with library defaults and popularity, on the same split.

    python -m bench.search [--seeds 1,2,3] [--data goodbooks,movielens]

The plain searches are deterministic for a seed: their results are kept in bench/.work/search_plain.jsonl and
reused. Writes bench/results/search.md and .csv, and bench/results/search_progress_DATA.png (the default search's
best NDCG@10 by minutes, seed 1 of each data set).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from bench import convert
from bench.harness import RESULTS, WORK, write_results
from recommender.model.evaluation import Split, split
from recommender.model.fit import fit_content
from recommender.model.params import SplitParams, TrainingParams, TuningPolicy
from recommender.training.compare import library_defaults, progress_chart
from recommender.training.costs import request_cost, typical_history
from recommender.training.trials import Trial, measure_parts
from recommender.training.tuning import Search, tune

PLAIN = WORK / "search_plain.jsonl"
COLUMNS = [
    "data", "seed", "default NDCG@10", "60-fit NDCG@10", "default / 60-fit", "20-fit (old default)",
    "ALS defaults", "popularity", "cold: default", "cold: ALS defaults", "cold: popularity", "default s",
    "60-fit s", "chosen", "M multiply-adds a request",
]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--data", default="goodbooks,movielens")
    args = parser.parse_args()
    rows: list[list[object]] = []
    charted: list[tuple[str, list[Trial]]] = []
    for name in args.data.split(","):
        data = convert.training_data(name)
        for seed in (int(s) for s in args.seeds.split(",")):
            the_split = split(data, SplitParams(seed=seed))
            params = TrainingParams()
            content = fit_content(data.books, params)
            started = time.perf_counter()
            best, tried = tune(the_split, params, content, Search.of(TuningPolicy(), seed))
            seconds = time.perf_counter() - started
            if seed == 1:
                charted.append((name, tried))
            long, old = (plain(name, seed, trials, the_split, params, content) for trials in (60, 20))
            parts = measure_parts(best.model, the_split)
            als = library_defaults(the_split, best.model, SplitParams().like_threshold).metrics
            m = best.metrics
            rows.append([
                name, seed, f"{m.ndcg:.4f}", f"{long['ndcg']:.4f}", f"{m.ndcg / long['ndcg']:.1%}",
                f"{old['ndcg']:.4f}", f"{als.ndcg:.4f}", f"{parts['popularity'].ndcg:.4f}", f"{m.ndcg_cold:.4f}",
                f"{als.ndcg_cold:.4f}", f"{parts['popularity'].ndcg_cold:.4f}", round(seconds),
                round(long["seconds"]),
                f"{best.params.als.factors} factors, reg {best.params.als.regularization:.3g}",
                f"{request_cost(best.model, typical_history(the_split)):.1f}",
            ])  # fmt: skip
            print(rows[-1], flush=True)
    write_results(
        "search",
        "The default search against a 60-fit plain search, per data set and split seed (bench/search.py)",
        COLUMNS,
        rows,
        "Default: RECOMMENDER_TUNING_TRIALS=20 full fits' worth, fits judged early (successive halving), the "
        "portfolio first, no serving budget. 60-fit and 20-fit: TPE alone, every fit in full. Cold: "
        "readers cut to 3 books. Cost: the chosen model's maths a request (ranking and because), millions of "
        "multiply-adds (model/cost.py).",
    )
    for name, tried in charted:
        progress_chart(tried, RESULTS / f"search_progress_{name}.png", f"{name}, split seed 1, default settings")
    return 0


def plain(
    name: str, seed: int, trials: int, the_split: Split, params: TrainingParams, content: Any
) -> dict[str, float]:
    """The plain search's result on this split (kept: it is deterministic for the seed)."""
    kept = _kept()
    key = f"{name}/{seed}/{trials}"
    if key not in kept:
        started = time.perf_counter()
        search = Search(trials, None, seed, halving=False, portfolio=())
        best, _tried = tune(the_split, params, content, search)
        kept[key] = {
            "ndcg": best.metrics.ndcg,
            "cold": best.metrics.ndcg_cold,
            "seconds": time.perf_counter() - started,
        }
        PLAIN.parent.mkdir(parents=True, exist_ok=True)
        with open(PLAIN, "a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, **kept[key]}) + "\n")
    return kept[key]


def _kept() -> dict[str, dict[str, float]]:
    if not PLAIN.exists():
        return {}
    rows = [json.loads(line) for line in PLAIN.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {row.pop("key"): row for row in rows}


if __name__ == "__main__":
    sys.exit(main())
