"""Measuring a configuration on a held-out split, and searching for a better one within a time budget."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from recommender.model.content import ContentModel
from recommender.model.evaluation import IntArray, K, Ranker, RankingMetrics, Split, evaluate
from recommender.model.fit import train
from recommender.model.hybrid import Catalogue, HybridModel
from recommender.model.params import TrainingParams
from recommender.model.ranking import Mode, rank_users

log = logging.getLogger(__name__)

ALPHAS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def measure_modes(model: HybridModel, split: Split, modes: tuple[Mode, ...]) -> dict[Mode, RankingMetrics]:
    """The metrics of `model` (fitted on `split.train`) ranking by each mode, on the split's held-out books."""
    users = list(split.held_out)
    return {
        mode: evaluate(_lookup(dict(zip(users, lists, strict=True))), split, model.num_books)
        for mode, lists in rank_users(model, users, K, modes).items()
    }


def _lookup(ranked: dict[int, IntArray]) -> Ranker:
    return lambda user, _k: ranked[user]


def measure(model: HybridModel, split: Split, mode: Mode = Mode.HYBRID) -> RankingMetrics:
    return measure_modes(model, split, (mode,))[mode]


PART_NAMES = {Mode.HYBRID: "hybrid", Mode.CF: "cf", Mode.CONTENT: "content", Mode.POPULAR: "popularity"}


def measure_parts(model: HybridModel, split: Split) -> dict[str, RankingMetrics]:
    """The blend, each of its parts, and popularity, on the same split (one scoring pass)."""
    return {PART_NAMES[mode]: m for mode, m in measure_modes(model, split, tuple(PART_NAMES)).items()}


@dataclass(frozen=True)
class Trial:
    params: TrainingParams
    model: HybridModel  # fitted on the split's training part
    metrics: RankingMetrics
    seconds: float
    parts: dict[str, RankingMetrics] | None = None  # measure_parts of the model, when measured in the same pass

    def measured_parts(self, split: Split) -> dict[str, RankingMetrics]:
        return self.parts if self.parts is not None else measure_parts(self.model, split)


def fit_and_measure(
    split: Split,
    params: TrainingParams,
    fitted_content: tuple[Catalogue, ContentModel],
    should_stop: Callable[[], bool],
    parts: bool = False,
) -> Trial:
    """`parts`: measure the blend's parts too, in the same scoring pass (for a trial likely to be released, whose
    parts would otherwise take a second pass)."""
    started = time.perf_counter()
    model = train(split.train, params, should_stop, fitted_content)
    if not parts:
        return Trial(params, model, measure(model, split), time.perf_counter() - started)
    measured = measure_parts(model, split)
    return Trial(params, model, measured["hybrid"], time.perf_counter() - started, measured)


def with_alpha(trial: Trial, alpha: float, split: Split) -> Trial:
    """The same fits blended with another alpha: no refit needed."""
    model = trial.model.with_blend(alpha=alpha)
    params = dataclasses.replace(trial.params, alpha=alpha)
    return Trial(params, model, measure(model, split), trial.seconds)


def neighbours(params: TrainingParams) -> Iterator[TrainingParams]:
    """The configurations next to `params`, one knob at a time, likeliest gains first (a fixed order, so that the
    search is deterministic whenever the budget lets it finish)."""
    als = params.als
    steps: list[dict[str, Any]] = [
        {"factors": min(als.factors * 2, 512)},
        {"regularization": als.regularization * 10 or 0.01},
        {"rating_scale": als.rating_scale * 2},
        {"confidence": als.confidence * 2},
        {"factors": max(als.factors // 2, 8)},
        {"regularization": als.regularization / 10},
        {"rating_scale": als.rating_scale / 2},
        {"confidence": als.confidence / 2},
        {"iterations": min(als.iterations + 10, 100)},
    ]
    for step in steps:
        candidate = dataclasses.replace(params, als=dataclasses.replace(als, **step))
        if candidate != params:
            yield candidate


def tune(
    split: Split,
    start: TrainingParams,
    fitted_content: tuple[Catalogue, ContentModel],
    budget_seconds: float,
    tune_alpha: bool,
    should_stop: Callable[[], bool] = lambda: False,
    first: Trial | None = None,
) -> tuple[Trial, int]:
    """Greedy coordinate search from `start` (the last version's choice): tries each neighbour while the budget
    lasts, moves to the first that improves NDCG@10, and starts over from there; then, with `tune_alpha`, the
    blend weight of the best fit (no refit needed). Returns the best trial and the number of fits."""
    deadline = time.perf_counter() + budget_seconds
    best = first or fit_and_measure(split, start, fitted_content, should_stop, parts=True)
    fits, tried = 1, {best.params}
    improved = True
    while improved:
        improved = False
        for candidate in neighbours(best.params):
            if candidate in tried:
                continue
            if time.perf_counter() + best.seconds > deadline:
                log.info("tuning: budget of %.0f s spent after %d fits", budget_seconds, fits)
                improved = False
                break
            tried.add(candidate)
            trial = fit_and_measure(split, candidate, fitted_content, should_stop)
            fits += 1
            if trial.metrics.ndcg_at_10 > best.metrics.ndcg_at_10:
                best, improved = trial, True
                break
    return (_best_alpha(best, split) if tune_alpha else best), fits


def _best_alpha(trial: Trial, split: Split) -> Trial:
    best = trial
    for alpha in ALPHAS:
        if alpha != trial.params.alpha:
            candidate = with_alpha(trial, alpha, split)
            if candidate.metrics.ndcg_at_10 > best.metrics.ndcg_at_10:
                best = candidate
    return best
