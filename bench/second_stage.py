"""What a learned second stage would be worth, measured before it is built: LightGBM's LambdaRank re-ranking the
candidates that a reader's book signals already gather (the blend's shortlist, the books of the reader's most-read
authors, the next volumes; model/signal_loops.py's `candidates`), against the blend alone and the blend with the
linear signals it serves today, on the Goodreads sample and MovieLens, two split seeds each.

    python -m bench.second_stage [--seeds 1,2] [--data goodbooks,movielens]

The protocol keeps every label the ranker learns from away from the readers it is measured on: the evaluation
split's training part is split again (seed + 50); a version fitted on that inner training part gives the
candidates' features, the inner held-out books their labels. Half of the inner readers fit the ranker; on the
other half it is chosen over the blend only where it wins by more than twice the standard error of the readers'
differences (`chosen`), as a search would choose. A version fitted on the evaluation split's whole training part
then ranks its held-out readers, each way. Each data set and seed twice: the default fit (no search), and what
the default search without signals chose on that split, refitted on split seed + 100 and measured there (the
protocol of bench/book_signals.py), the blend the issue's target compares against.

Writes bench/results/second_stage.md and .csv. Needs `lightgbm` (the dev extra): a measurement, not yet part of
the product.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from bench import convert
from bench.book_signals import OTHER_SPLIT, searched
from bench.harness import write_results
from recommender.model.catalogue import Catalogue
from recommender.model.cf import IntArray
from recommender.model.compiled import blended
from recommender.model.content import ContentModel
from recommender.model.dataset import TrainingData
from recommender.model.evaluation import Report, Split, evaluate, ndcg_of, split
from recommender.model.fit import train
from recommender.model.hybrid import HybridModel
from recommender.model.params import SignalWeights, SplitParams, TrainingParams
from recommender.model.ranking import Mode, exact_terms
from recommender.model.readers import reader_of
from recommender.model.recommend import query_for, top_books
from recommender.model.shortlist import shortlists
from recommender.model.signal_loops import candidates, features
from recommender.model.signals import MOST_AUTHORS, ReaderSignals

INNER_SPLIT = 50  # the inner split's seed: the evaluation split's + this
TREES = 60  # of 15 leaves each
DEPTH = 50  # the blend's shortlist that the ranker re-ranks, with the signals' books
FEATURES = [
    "blended score", "CF part", "content part", "popularity", "author", "next volume", "later volume",
    "place in the blend's order", "in a series the reader started", "place in its series", "reader's books",
    "authors of the book",
]  # fmt: skip
COLUMNS = [
    "data", "seed", "fit", "blend NDCG@10", "linear signals", "ranker", "ranker / blend", "ranker / linear",
    "cold: ranker / blend", "chosen", "chosen / blend", "trees", "candidates a reader", "comparisons a candidate",
]  # fmt: skip

FloatMatrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Candidates:
    """One reader's candidates (book ids) and their features (FEATURES, a row each)."""

    book_ids: IntArray
    values: FloatMatrix


def reader_candidates(model: HybridModel, user: int) -> Candidates | None:
    """The books the signal path would consider for `user`, with what a ranker could learn from (None: no history)."""
    reader = reader_of(model, user)
    if not len(reader.seen):
        return None
    q, signals, rows = query_for(model, reader), model.signals, model.rows
    mine = ReaderSignals.of(signals, reader.seen, reader.weights)
    listed = shortlists(rows, [q], [DEPTH], [None])[0]
    unbounded = ((listed.values, q.offset, rows.popularity), -np.inf, 0.0, np.ones(3), signals.series, mine.started)
    found, _raised, _listed = candidates(
        listed.rows, mine.authors, mine.liked_by, MOST_AUTHORS, *signals.by_author, mine.following, mine.seen,
        np.zeros(0, dtype=np.bool_), unbounded,
    )  # fmt: skip
    author, following, later = features(
        found, mine.authors, mine.liked_by, mine.started, mine.following, *signals.by_book, signals.series,
        signals.position,
    )  # fmt: skip
    ordered, scores, cf, text = blended(
        rows.item_factors, rows.item_of_book, rows.content, rows.popularity, found, *exact_terms(q)
    )
    at = np.searchsorted(found, ordered)
    series = signals.series[ordered]
    values = np.column_stack([
        scores, cf, text, rows.popularity[ordered], author[at], following[at], later[at], np.arange(len(ordered)),
        (series >= 0) & np.isin(series, mine.started), np.nan_to_num(signals.position[ordered]),
        np.full(len(ordered), len(reader.seen)), np.diff(signals.by_book[0])[ordered],
    ])  # fmt: skip
    return Candidates(model.catalogue.book_ids[ordered], values.astype(np.float64))


@dataclass(frozen=True)
class Labelled:
    """Many readers' candidates, stacked, with 1 for a held-out book."""

    users: list[int]
    found: list[Candidates]
    labels: npt.NDArray[np.int32]

    @classmethod
    def of(cls, model: HybridModel, held_out: dict[int, npt.NDArray[np.int32]], users: Sequence[int]) -> Labelled:
        kept = [(u, c) for u in users if (c := reader_candidates(model, u)) is not None]
        labels = [np.isin(c.book_ids, held_out[u]).astype(np.int32) for u, c in kept]
        return cls([u for u, _ in kept], [c for _, c in kept], np.concatenate(labels))

    @property
    def values(self) -> FloatMatrix:
        return np.vstack([c.values for c in self.found])

    @property
    def groups(self) -> list[int]:
        return [len(c.book_ids) for c in self.found]


def fitted_ranker(model: HybridModel, inner: Split, seed: int) -> tuple[lgb.LGBMRanker, bool]:
    """The ranker fitted on half of the inner readers; and whether it beats the blend on the other half, by more
    than twice the standard error of the readers' differences (the choice)."""
    users = np.random.default_rng(seed).permutation(sorted(inner.held_out)).tolist()
    fit, choose = (Labelled.of(model, inner.held_out, half) for half in (users[::2], users[1::2]))
    ranker = lgb.LGBMRanker(
        objective="lambdarank", n_estimators=TREES, learning_rate=0.05, num_leaves=15, min_child_samples=100,
        lambdarank_truncation_level=20, random_state=seed, verbose=-1,
    )  # fmt: skip
    ranker.fit(fit.values, fit.labels, group=fit.groups)
    by_ranker = ranked_by(ranker, choose)
    by_blend = blend_top(model, choose.users, SignalWeights())
    gains = [
        ndcg_of(np.isin(by_ranker[u], inner.held_out[u]), len(inner.held_out[u]))
        - ndcg_of(np.isin(by_blend[u], inner.held_out[u]), len(inner.held_out[u]))
        for u in choose.users
    ]
    return ranker, bool(np.mean(gains) > 2 * np.std(gains) / np.sqrt(len(gains)))


def ranked_by(ranker: lgb.LGBMRanker, readers: Labelled) -> dict[int, IntArray]:
    """Each reader's ten best candidates by the ranker."""
    predicted = np.asarray(ranker.predict(readers.values), dtype=np.float64)
    found, at = {}, 0
    for user, c in zip(readers.users, readers.found, strict=True):
        mine = predicted[at : at + len(c.book_ids)]
        at += len(c.book_ids)
        found[user] = c.book_ids[np.argsort(-mine, kind="stable")[:10]]
    return found


def blend_top(model: HybridModel, users: list[int], weights: SignalWeights) -> dict[int, IntArray]:
    version = model.with_signals(weights)
    return dict(zip(users, top_books(version, users, 10, [Mode.HYBRID])[Mode.HYBRID], strict=True))


def report(the_split: Split, found: dict[int, IntArray], model: HybridModel) -> Report:
    empty = np.zeros(0, dtype=np.int32)
    return evaluate(lambda user, k: found.get(user, empty), the_split, model.num_books)


def comparisons(ranker: lgb.LGBMRanker) -> float:
    """The comparisons one candidate's score takes: over the trees, the depth of a leaf weighed by the training
    rows that reached it (what serving would pay per candidate, compiled, whatever the machine)."""
    total = 0.0
    for tree in ranker.booster_.dump_model()["tree_info"]:
        leaves = list(_leaves(tree["tree_structure"], 0))
        reached = sum(count for _depth, count in leaves)
        total += sum(depth * count for depth, count in leaves) / max(reached, 1)
    return total


def _leaves(node: dict[str, Any], depth: int) -> Iterator[tuple[int, int]]:
    """(depth, training rows) of each leaf under `node` (LightGBM's dumped tree)."""
    if "leaf_value" in node:
        yield depth, int(node.get("leaf_count", 0))
        return
    for side in ("left_child", "right_child"):
        yield from _leaves(node[side], depth + 1)


def measured(
    name: str, data: TrainingData, content: tuple[Catalogue, ContentModel], seed: int, fit: str
) -> list[object]:
    """One row: the rankings of one data set on one split seed, with the default fit, or (`fit` "searched") with
    the default search's choice without signals, made on that split and refitted on split seed + OTHER_SPLIT
    (bench/book_signals.py's protocol), where all is then measured."""
    params = TrainingParams()
    outer = split(data, SplitParams(seed=seed))
    if fit == "searched":
        params = searched(outer, content, seed, signals=False)
        outer = split(data, SplitParams(seed=seed + OTHER_SPLIT))
    inner = split(outer.train, SplitParams(seed=seed + INNER_SPLIT))
    ranker, wins = fitted_ranker(train(inner.train, params, fitted_content=content), inner, seed)
    model = train(outer.train, params, fitted_content=content)
    users = sorted(outer.held_out)
    readers = Labelled.of(model, outer.held_out, users)
    blend = report(outer, blend_top(model, users, SignalWeights()), model)
    linear = report(outer, blend_top(model, users, TrainingParams().signals), model)
    by_ranker = report(outer, ranked_by(ranker, readers), model)
    chosen = by_ranker if wins else blend
    return [
        name, seed, fit, f"{blend.ndcg:.4f}", f"{linear.ndcg:.4f}", f"{by_ranker.ndcg:.4f}",
        f"{by_ranker.ndcg / blend.ndcg:.3f}", f"{by_ranker.ndcg / linear.ndcg:.3f}",
        f"{by_ranker.ndcg_cold / blend.ndcg_cold:.3f}",
        "ranker" if wins else "blend", f"{chosen.ndcg / blend.ndcg:.3f}", ranker.booster_.num_trees(),
        round(float(np.mean(readers.groups))), round(comparisons(ranker)),
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
        "What a learned second stage would be worth (bench/second_stage.py)",
        COLUMNS,
        rows,
        "NDCG@10 of the evaluation split's warm readers, a version fitted on its training part with the default "
        "parameters (fit: default) or with the default search's choice without signals (searched): the blend "
        "alone, the blend with the default linear signal weights, and LambdaRank (LightGBM, "
        f"{TREES} trees of 15 leaves) over the blend's {DEPTH} best and the books the reader's signals gather, "
        f"fitted on an inner split (seed + {INNER_SPLIT}) and never on these readers. Chosen: the "
        "ranker where it beat the blend on the inner readers it was not fitted on, by more than twice the standard "
        "error of their differences. Features: " + ", ".join(FEATURES) + ".",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
