"""What the learned second stage is worth beside the blend alone and the weighed signals, as the product fits it
(training/ranker.py's `best_ranker`: LambdaRank over the candidates of model/learned.py, fitted on an inner split of
the evaluation split's training part, kept where it ranks the held-out books better), on the Goodreads sample and
MovieLens, two split seeds each.

    python -m bench.second_stage [--seeds 1,2] [--data goodbooks,movielens]

Each data set and seed twice: the default fit (no search), and what the default search without signals chose on
that split, refitted on split seed + 100 and measured there (the protocol of bench/book_signals.py). Writes
bench/results/second_stage.md and .csv, with what serving the trees costs: the candidates a reader and the
comparisons a candidate (the depth of the leaf each tree sends it to, summed over the trees).
"""

from __future__ import annotations

import itertools

import numpy as np
from threadpoolctl import threadpool_limits

from bench import convert
from bench.book_signals import OTHER_SPLIT, searched
from bench.harness import write_results
from recommender.model.catalogue import Catalogue
from recommender.model.content import ContentModel
from recommender.model.dataset import TrainingData
from recommender.model.evaluation import split
from recommender.model.learned import Ranker
from recommender.model.learned_loops import FEATURES
from recommender.model.params import SignalWeights, SplitParams, TrainingParams
from recommender.model.trees import LEAF, Trees
from recommender.training.blends import above_floor, blend_floor
from recommender.training.ranker import labelled, learned_trees, trial_with
from recommender.training.trials import fit_and_measure, measure

COLUMNS = [
    "data", "seed", "fit", "blend NDCG@10", "weighed signals", "learned", "learned / blend", "learned / weighed",
    "cold: learned / blend", "kept", "trees", "candidates a reader", "comparisons a candidate",
]  # fmt: skip


def comparisons(trees: Trees, values: np.ndarray) -> float:
    """The mean over `values`' rows of the comparisons their scores take (the depth of each tree's leaf, summed)."""
    total = 0
    for root in trees.roots:
        for row in values:
            node = root
            while trees.feature[node] != LEAF:
                total += 1
                node = trees.left[node] if row[trees.feature[node]] <= trees.threshold[node] else trees.right[node]
    return total / max(len(values), 1)


def measured(
    name: str, data: TrainingData, content: tuple[Catalogue, ContentModel], seed: int, fit: str
) -> list[object]:
    """One row: the default fit on split `seed`, or (`fit` "searched") the default search's choice without signals,
    refitted on split seed + OTHER_SPLIT."""
    params = TrainingParams(signals=SignalWeights())
    the_split = split(data, SplitParams(seed=seed))
    if fit == "searched":
        params = searched(the_split, content, seed, signals=False).params
        the_split = split(data, SplitParams(seed=seed + OTHER_SPLIT))
    blend = fit_and_measure(the_split, params, content, lambda: False)
    weighed = measure(blend.model.with_signals(TrainingParams().signals), the_split)
    trees = learned_trees(blend, the_split, content)
    if trees is None:
        return [name, seed, fit, f"{blend.metrics.ndcg:.4f}", f"{weighed.ndcg:.4f}", "none fitted", *[""] * 7]
    served = trial_with(blend, Ranker(trees), the_split).metrics
    floor = blend_floor(blend, the_split)
    kept = above_floor(served, floor) > above_floor(blend.metrics, floor)  # best_ranker's rule, for every reader
    rows = labelled(blend.model, the_split.held_out, sorted(the_split.held_out)[:300])
    return [
        name, seed, fit, f"{blend.metrics.ndcg:.4f}", f"{weighed.ndcg:.4f}", f"{served.ndcg:.4f}",
        f"{served.ndcg / blend.metrics.ndcg:.3f}", f"{served.ndcg / weighed.ndcg:.3f}",
        f"{served.ndcg_cold / blend.metrics.ndcg_cold:.3f}", "yes" if kept else "no",
        len(trees.roots), round(float(np.mean(rows.groups))), round(comparisons(trees, rows.values[:5_000])),
    ]  # fmt: skip


def main() -> int:
    prepared, seeds = convert.split_arguments(__doc__)
    rows: list[list[object]] = []
    with threadpool_limits(2):
        for name, data, content in prepared:
            for seed, fit in itertools.product(seeds, ("default", "searched")):
                rows.append(measured(name, data, content, seed, fit))
                print(rows[-1], flush=True)
    write_results(
        "second_stage",
        "The learned second stage beside the blend and the weighed signals (bench/second_stage.py)",
        COLUMNS,
        rows,
        "NDCG@10 of the evaluation split's readers, a version fitted on its training part with the default "
        "parameters without signals (fit: default) or with the default search's choice without signals (searched): "
        "the blend alone, with the default signal weights, and with the learned stage (training/ranker.py: "
        "LambdaRank over the blend's best and the books the reader's signals gather, fitted on an inner split, "
        "never on these readers). Kept: whether it ranks these held-out books better than the blend alone "
        "(best_ranker's rule). "
        "Features: " + ", ".join(FEATURES) + ".",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
