"""What the author cap costs in NDCG@10: the Goodreads sample (where series are common), the evaluation protocol of
`recommender evaluate`, every evaluated reader answered without a cap, with at most two books of one (first)
author, and with one; two split seeds.

    python -m bench.diversity_cost

Writes bench/results/diversity_cost.md and .csv.
"""

from __future__ import annotations

import sys

import numpy as np

from bench import convert
from bench.harness import write_results
from recommender.model.answers import Request
from recommender.model.evaluation import K, Report, Split, evaluate, split
from recommender.model.fit import train
from recommender.model.hybrid import HybridModel
from recommender.model.params import SplitParams, TrainingParams
from recommender.model.recommend import recommend_many

CAPS = (None, 2, 1)


def main() -> int:
    data = convert.training_data("goodbooks")
    rows: list[list[object]] = []
    for seed in (1, 2):
        the_split = split(data, SplitParams(seed=seed))
        model = train(the_split.train, TrainingParams())
        base = None
        for cap in CAPS:
            report = measured(model, the_split, cap)
            base = base or report.ndcg
            rows.append([
                seed, "none" if cap is None else cap, f"{report.ndcg:.4f}", f"{report.ndcg / base - 1:+.1%}",
                f"{report.ndcg_cold:.4f}", f"{report.warm.coverage:.3f}",
            ])  # fmt: skip
            print(rows[-1], flush=True)
    write_results(
        "diversity_cost",
        "The author cap's cost in NDCG@10 on the Goodreads sample",
        ["split seed", "max_per_author", "NDCG@10", "change", "NDCG@10 cold", "coverage"],
        rows,
        "The default configuration (no search), every evaluated reader, ten books.",
    )
    return 0


def measured(model: HybridModel, the_split: Split, cap: int | None) -> Report:
    users = list(the_split.held_out)
    answers = recommend_many(model, [Request(u, K, max_per_author=cap) for u in users], explain=False)
    lists = {u: np.array([b.book_id for b in a.books], dtype=np.int32) for u, a in zip(users, answers, strict=True)}
    return evaluate(lambda user, _k: lists[user], the_split, model.num_books)


if __name__ == "__main__":
    sys.exit(main())
