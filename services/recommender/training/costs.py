"""The serving budget of a search: a request's model maths, in millions of multiply-adds (model/cost.py), the
same figure on every machine; the best fit that serves within it."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from recommender.model.cost import request_madds
from recommender.model.evaluation import Split
from recommender.model.hybrid import HybridModel
from recommender.training.trials import Trial

log = logging.getLogger(__name__)


def typical_history(split: Split) -> float:
    """The median reader's books in the split's training part: the history a request is costed for."""
    _users, counts = np.unique(split.train.user_ids, return_counts=True)
    return float(np.median(counts)) if len(counts) else 0.0


def request_cost(model: HybridModel, history: float) -> float:
    """Millions of multiply-adds of one request's model maths with `model`, for a reader with `history` books."""
    factors = model.cf.item_factors.shape[1]
    return request_madds(model.num_books, factors, model.content.vectors.shape[1], history) / 1e6


def over(trial: Trial, budget: float | None) -> bool:
    return budget is not None and trial.cost is not None and trial.cost > budget


def best_within(fits: Iterable[Trial], budget: float | None) -> Trial:
    """The best finished fit that serves within the budget (or, when none does, the cheapest one)."""
    finished = [t for t in fits if t.full]
    feasible = [t for t in finished if not over(t, budget)]
    if feasible:
        return max(feasible, key=lambda t: t.score)
    cheapest = min(finished, key=lambda t: t.cost or 0.0)
    log.warning(
        "tuning: no configuration served within %.2f million multiply-adds a request; the cheapest (%.2f) is chosen",
        budget or 0.0, cheapest.cost or 0.0,
    )  # fmt: skip
    return cheapest
