"""The learned stage of a search: LightGBM's LambdaRank fitted over a reader's candidates and their features
(model/learned.py), then kept where it ranks the split's held-out books better than the weighed signals.

No label it learns from is one the split measures: the split's training part is split again (INNER_SPLIT), the
chosen configuration fitted on that inner training part gives the candidates' features, and the inner held-out books
their labels. The version released is fitted on all data and carries the trees (training/trainer.py); its features
are z-scores and counts, in the same units whichever fit made them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from recommender.model.catalogue import Catalogue
from recommender.model.content import ContentModel
from recommender.model.evaluation import Split, split
from recommender.model.fit import TrainingCancelled, train
from recommender.model.hybrid import HybridModel
from recommender.model.learned import DEPTH, SHORT_HISTORY, Candidates, Ranker, candidates
from recommender.model.params import SplitParams, TrainingParams
from recommender.model.readers import reader_of
from recommender.model.recommend import query_for
from recommender.model.shortlist import shortlists
from recommender.model.signals import ReaderSignals
from recommender.model.trees import Trees
from recommender.training.blends import above_floor
from recommender.training.trials import Trial, measure

log = logging.getLogger(__name__)

INNER_SPLIT = 50  # the inner split's seed: the evaluation split's + this
# LambdaRank's knobs: 30 trees of 15 leaves, each leaf of 100 candidates or more, NDCG's pairs within the best 20.
# Measured on the Goodreads sample (default fit, split seeds 1 and 2, NDCG@10 of the served answer): 30 trees at a
# rate of 0.1 gave 0.3454 and 0.3493, 60 at 0.05 0.3465 and 0.3486 in twice the steps a candidate (206 against
# 414); trees of depth 4 or 5 lost up to 0.003.
TREES = 30
LEAVES = 15
LEAST_IN_LEAF = 100
TRUNCATION = 20
LEARNING_RATE = 0.1


@dataclasses.dataclass(frozen=True)
class Labelled:
    """Many readers' candidates, stacked, with 1 for a held-out book."""

    values: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int32]
    groups: list[int]


def labelled(model: HybridModel, held_out: dict[int, npt.NDArray[np.int32]], users: Sequence[int]) -> Labelled:
    """The candidates of `users` (those with a history) under `model`, a label each: held out or not."""
    found: list[Candidates] = []
    labels = []
    for user in users:
        mine = reader_candidates(model, user)
        if mine is not None:
            found.append(mine)
            labels.append(np.isin(model.catalogue.book_ids[mine.rows], held_out[user]).astype(np.int32))
    if not found:
        return Labelled(np.zeros((0, 0)), np.zeros(0, dtype=np.int32), [])
    return Labelled(np.vstack([c.values for c in found]), np.concatenate(labels), [len(c.rows) for c in found])


def reader_candidates(model: HybridModel, user: int) -> Candidates | None:
    """What the learned stage ranks for `user` (None: no history), as serving builds it for an answer of ten."""
    reader = reader_of(model, user)
    if not len(reader.seen):
        return None
    mine = ReaderSignals.of(model.signals, reader.seen, reader.weights)
    q = query_for(model, reader)
    listed = shortlists(model.rows, [q], [DEPTH], [None])[0]
    return candidates(model.signals, mine, model.rows, q, listed, DEPTH)


def fitted_trees(rows: Labelled, seed: int, threads: int) -> Trees | None:
    """LambdaRank's trees over `rows` (None: no held-out book among them, nothing to learn)."""
    if not rows.labels.any():
        return None
    ranker = lgb.LGBMRanker(
        objective="lambdarank", n_estimators=TREES, learning_rate=LEARNING_RATE, num_leaves=LEAVES,
        min_child_samples=LEAST_IN_LEAF, lambdarank_truncation_level=TRUNCATION, random_state=seed,
        n_jobs=max(threads, 1), verbose=-1,
    )  # fmt: skip
    ranker.fit(rows.values, rows.labels, group=rows.groups)
    return Trees.of_dump(ranker.booster_.dump_model())


@dataclass
class InnerTrees:
    """The trees of each configuration tried, fitted on `the_split`'s inner split: a retrain measures the active
    version's learned stage for the gate (`with_learned_stage`) and, when the search keeps that configuration,
    fits its trees once, not twice (a fit, the candidates and LambdaRank: 5 to 7 s on the Goodreads sample)."""

    the_split: Split
    fitted_content: tuple[Catalogue, ContentModel]
    should_stop: Callable[[], bool] = lambda: False
    fitted: dict[TrainingParams, Trees | None] = field(default_factory=dict)

    def of(self, trial: Trial) -> Trees | None:
        """Trees fitted for `trial`'s configuration (None: its inner split held no book to learn from)."""
        if trial.params not in self.fitted:
            self.fitted[trial.params] = learned_trees(trial, self.the_split, self.fitted_content, self.should_stop)
        return self.fitted[trial.params]


def best_ranker(best: Trial, inner: InnerTrees, floor: tuple[float, float], deadline: float) -> Trial:
    """`best` with the trees of its configuration (`inner`'s) as its second stage, for every reader or only for
    readers of SHORT_HISTORY books or more, whichever ranks the split's held-out books best (by `above_floor`);
    `best` itself where neither does better, or when its catalogue has no signals."""
    if best.model.signals.empty or time.perf_counter() > deadline:
        return best
    started = time.perf_counter()
    trees = inner.of(best)
    if trees is None:
        return best
    the_split = inner.the_split
    tried = [best, *(trial_with(best, Ranker(trees, least), the_split) for least in (0, SHORT_HISTORY))]
    chosen = max(tried, key=lambda t: above_floor(t.metrics, floor))  # the first of equals: the weighed signals
    log.info(
        "tuning: the learned stage gave NDCG@10 %s against %.4f weighed (%.1f s); %s",
        " and ".join(f"{t.metrics.ndcg:.4f}" for t in tried[1:]), best.metrics.ndcg, time.perf_counter() - started,
        "kept" if chosen.model.ranker is not None else "not kept",
    )  # fmt: skip
    return chosen


def learned_trees(
    best: Trial,
    the_split: Split,
    fitted_content: tuple[Catalogue, ContentModel],
    should_stop: Callable[[], bool] = lambda: False,
) -> Trees | None:
    """Trees fitted for `best`'s configuration on the inner split (None: it held no book to learn from)."""
    seed = best.params.als.random_state
    inner = split(the_split.train, SplitParams(seed=seed + INNER_SPLIT))
    fitted = train(inner.train, best.params, should_stop, fitted_content)
    if should_stop():
        raise TrainingCancelled("training cancelled")
    return fitted_trees(labelled(fitted, inner.held_out, sorted(inner.held_out)), seed, best.params.als.threads)


def trial_with(best: Trial, ranker: Ranker, the_split: Split) -> Trial:
    """`best` with `ranker` as its second stage, measured on the split."""
    model = best.model.with_ranker(ranker)
    return dataclasses.replace(
        best, params=model.meta.params, model=model, metrics=measure(model, the_split), parts=None
    )


def with_learned_stage(refitted: Trial, learned_from: int | None, inner: InnerTrees) -> Trial:
    """A configuration `refitted` on the split with the learned stage a version of it serves (for readers of
    `learned_from` books or more), its trees fitted as `best_ranker` fits them (`inner`'s): what the gate compares a
    candidate with. `refitted` itself for a version without one, or when no trees can be fitted."""
    if learned_from is None or refitted.model.signals.empty:
        return refitted
    trees = inner.of(refitted)
    return refitted if trees is None else trial_with(refitted, Ranker(trees, learned_from), inner.the_split)
