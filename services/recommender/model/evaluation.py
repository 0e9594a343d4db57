"""Offline evaluation: a held-out split of each user's liked books, and top-k ranking metrics.

Protocol: users with at least `min_positives` positive interactions (unrated, or rated at or above the like
threshold) are eligible (a random sample of `max_users` of them when there are more); `holdout` of each eligible
user's positives (at least one) are held out, chosen at random with `seed` or, with `by_time`, the most recent
ones. A share of the evaluated users (`cold_share`) forms the cold slice: their training history is cut to
`cold_history` interactions chosen at random, the rest dropped. Everything else trains. A ranker then recommends
`k` books per evaluated user from the books they have not interacted with in training, and the metrics compare
them with the held-out books, for the other evaluated users (the warm slice) and for the cold slice apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recommender.model.dataset import TrainingData
from recommender.model.params import SplitParams

IntArray = npt.NDArray[np.int32]
# Given a user id and k, the user's top-k book ids, best first.
Ranker = Callable[[int, int], IntArray]

K = 10
_DEFAULT = SplitParams()


@dataclass(frozen=True)
class Split:
    train: TrainingData
    held_out: dict[int, IntArray]  # user id -> held-out book ids
    cold: frozenset[int] = frozenset()  # evaluated users whose training history was cut to a few interactions

    @property
    def num_users(self) -> int:
        return len(self.held_out)

    def slice(self, cold: bool) -> dict[int, IntArray]:
        """The held-out books of the cold slice's users, or of the others."""
        return {user: books for user, books in self.held_out.items() if (user in self.cold) == cold}


@dataclass(frozen=True)
class RankingMetrics:
    precision_at_10: float
    recall_at_10: float
    ndcg_at_10: float
    coverage: float  # share of the catalogue that appears in anybody's top 10
    users: int

    def as_dict(self) -> dict[str, float]:
        return {
            "precision_at_10": self.precision_at_10,
            "recall_at_10": self.recall_at_10,
            "ndcg_at_10": self.ndcg_at_10,
            "coverage": self.coverage,
        }


@dataclass(frozen=True)
class Report:
    """A ranking's metrics on the split: the warm slice (readers with their history) and the cold one."""

    warm: RankingMetrics
    cold: RankingMetrics

    @property
    def ndcg(self) -> float:
        return self.warm.ndcg_at_10

    @property
    def ndcg_cold(self) -> float:
        return self.cold.ndcg_at_10

    def as_dict(self) -> dict[str, float]:
        """The warm slice's metrics under their plain names (and coverage, over both), the cold slice's as
        `*_cold`."""
        cold = self.cold.as_dict()
        del cold["coverage"]
        return self.warm.as_dict() | {f"{name}_cold": value for name, value in cold.items()}


def positives(data: TrainingData, like_threshold: float) -> npt.NDArray[np.bool_]:
    """Interactions that say the user liked the book: no rating (a read), or a rating at the threshold or above."""
    return np.isnan(data.ratings) | (data.ratings >= like_threshold)


def split(data: TrainingData, params: SplitParams = _DEFAULT) -> Split:
    """Deterministic for a given snapshot and params."""
    rng = np.random.default_rng(params.seed)
    liked = positives(data, params.like_threshold)
    order = np.lexsort((data.book_ids, data.user_ids))  # by user, then book: independent of the snapshot's order
    users, starts = np.unique(data.user_ids[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    liked_counts = np.add.reduceat(liked[order], starts) if len(starts) else np.zeros(0, dtype=np.int64)
    eligible = np.flatnonzero(liked_counts >= params.min_positives)
    if len(eligible) > params.max_users:
        eligible = np.sort(rng.choice(eligible, size=params.max_users, replace=False))
    test = np.zeros(data.num_interactions, dtype=bool)
    held_out: dict[int, IntArray] = {}
    cold_count = round(len(eligible) * params.cold_share)
    cold = set(rng.choice(len(eligible), size=cold_count, replace=False).tolist()) if cold_count else set()
    cold_users = set()
    for index, (user, start, end) in enumerate(zip(users[eligible], starts[eligible], ends[eligible], strict=True)):
        everything = order[start:end]
        rows = everything[liked[everything]]
        count = max(1, round(len(rows) * params.holdout))
        if params.by_time:
            chosen = rows[np.argsort(data.timestamps[rows], kind="stable")[-count:]]
        else:
            chosen = rng.choice(rows, size=count, replace=False)
        test[chosen] = True
        held_out[int(user)] = np.sort(data.book_ids[chosen]).astype(np.int32)
        if index in cold:
            training = np.setdiff1d(everything, chosen)
            kept = rng.choice(training, size=min(params.cold_history, len(training)), replace=False)
            test[np.setdiff1d(training, kept)] = True  # dropped: neither trained on nor held out
            cold_users.add(int(user))
    return Split(train=data.subset(~test), held_out=held_out, cold=frozenset(cold_users))


def evaluate(rank: Ranker, split_: Split, catalogue_size: int, k: int = K) -> Report:
    """Precision, recall and NDCG at k averaged over each slice's users; catalogue coverage over both."""
    shown: set[int] = set()
    warm = _metrics(rank, split_.slice(cold=False), k, shown)
    cold = _metrics(rank, split_.slice(cold=True), k, shown)
    coverage = len(shown) / max(catalogue_size, 1)
    return Report(dataclasses.replace(warm, coverage=coverage), dataclasses.replace(cold, coverage=coverage))


def _metrics(rank: Ranker, held_out: dict[int, IntArray], k: int, shown: set[int]) -> RankingMetrics:
    if not held_out:
        return RankingMetrics(0.0, 0.0, 0.0, 0.0, 0)
    precision = recall = ndcg = 0.0
    for user, relevant in held_out.items():
        top = rank(user, k)[:k]
        shown.update(int(b) for b in top)
        hits = np.isin(top, relevant)
        precision += hits.sum() / k
        recall += hits.sum() / len(relevant)
        ndcg += ndcg_of(hits, len(relevant), k)
    n = len(held_out)
    return RankingMetrics(float(precision / n), float(recall / n), ndcg / n, 0.0, n)


def ndcg_of(hits: npt.NDArray[np.bool_], relevant: int, k: int = K) -> float:
    """One reader's NDCG@k: `hits`, whether each of their top books (at most k) was held out; `relevant`, how many
    were."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    return float(discounts[: len(hits)][hits].sum() / discounts[: min(relevant, k)].sum())
