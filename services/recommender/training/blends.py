"""The blend stage of a search: alpha and the two priors of one fit, each a ranking pass without a fit, by scipy's
Nelder-Mead from the known blends. A blend that does worse than one of its own parts on either slice (or, on the
cold slice, than COLD_OVER_POPULAR times popularity) is penalised."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import scipy.optimize

from recommender.model.evaluation import Report, Split
from recommender.model.fit import TrainingCancelled
from recommender.model.params import TrainingParams
from recommender.training.trials import Trial, measure, score

log = logging.getLogger(__name__)


Blend3 = tuple[float, float, float]  # alpha, popularity prior, CF prior


PRIOR_MOST = 50.0


# Known-good blends, measured after the known ones: chosen across the public data sets by bench/blend_portfolio.py.
BLEND_PORTFOLIO: tuple[Blend3, ...] = ((0.664, 0.85, 7.61), (0.867, 0.0, 0.606), (0.635, 2.23, 3.54))


# The parts themselves are blends too (CF alone; mostly popularity): measured first, a blend that loses to them
# never wins.
PARTS_AS_BLENDS: tuple[Blend3, ...] = ((1.0, 0.0, 0.0), (1.0, PRIOR_MOST, 0.0))


FIRST_STEPS = (0.2, 0.7, 0.7)  # the first simplex's edges: alpha, then log(1 + prior) for each prior


SINGLE_PARTS = ("cf", "content", "popularity")


COLD_OVER_POPULAR = 1.1  # a blend's cold slice below this many times popularity's is penalised like a loss to a part


def blend_floor(fitted: Trial, split: Split) -> tuple[float, float]:
    """What a blend of `fitted` must reach on each slice: its best single part (a hybrid must never lose to one of
    its own parts), and on the cold slice also COLD_OVER_POPULAR times popularity (readers with three books must
    gain clearly over the popular list, not merely match it)."""
    parts = fitted.measured_parts(split)
    cold = max(max(parts[p].ndcg_cold for p in SINGLE_PARTS), COLD_OVER_POPULAR * parts["popularity"].ndcg_cold)
    return max(parts[p].ndcg for p in SINGLE_PARTS), cold


class _Spent(Exception):
    """The blend search's time is up."""


def best_blend(
    best: Trial,
    split: Split,
    floor: tuple[float, float],
    known: Sequence[Blend3],
    budget: int,
    deadline: float,
    should_stop: Callable[[], bool] = lambda: False,
) -> Trial:
    """The best blend of `best`'s fit (by `above_floor`) in `budget` ranking passes: the known blends, then scipy's
    Nelder-Mead from the best of them, on alpha and log(1 + prior) for the two priors. A blend is three knobs and a
    cheap, deterministic measurement with a steep edge where a slice falls below its floor, which a few dozen TPE
    proposals rarely find: on a MovieLens fit, Nelder-Mead reached a better `above_floor` in 30 passes than TPE in 60,
    and on it and on a Goodreads fit, than a 150-point grid. With no pass left, `best` as it is."""
    measured: dict[Blend3, Trial] = {_rounded(blend_knobs(best.params)): best}
    passes = 0

    def value(knobs: Blend3) -> float:
        nonlocal passes
        key = _rounded(knobs)
        if key not in measured:
            if passes >= budget or time.perf_counter() > deadline:
                raise _Spent()
            if should_stop():
                raise TrainingCancelled("training cancelled")
            passes += 1
            model = best.model.with_blend(*key)
            measured[key] = Trial(model.meta.params, model, measure(model, split), best.seconds, cost=best.cost)
        return above_floor(measured[key].metrics, floor)

    def knobs_at(x: npt.NDArray[np.float64]) -> Blend3:
        return float(x[0]), float(np.expm1(x[1])), float(np.expm1(x[2]))

    try:
        start = max(known, key=value)
        upper = np.array([1.0, np.log1p(PRIOR_MOST), np.log1p(PRIOR_MOST)])
        x0 = np.clip([start[0], np.log1p(start[1]), np.log1p(start[2])], 0.0, upper)
        # Each edge of the first simplex points into the box.
        edges = [
            x0 + np.eye(3)[i] * (step if x0[i] + step <= upper[i] else -step) for i, step in enumerate(FIRST_STEPS)
        ]
        scipy.optimize.minimize(
            lambda x: -value(knobs_at(x)), x0, method="Nelder-Mead", bounds=list(zip(np.zeros(3), upper, strict=True)),
            options={"initial_simplex": np.array([x0, *edges]), "maxfev": budget, "xatol": 1e-3, "fatol": 1e-5},
        )  # fmt: skip
    except _Spent:
        log.info("tuning: the blend search spent its %d passes or its time", budget)
    return max(measured.values(), key=lambda t: above_floor(t.metrics, floor))


def _rounded(knobs: Blend3) -> Blend3:
    return round(knobs[0], 4), round(knobs[1], 4), round(knobs[2], 4)


def above_floor(report: Report, floor: tuple[float, float]) -> float:
    """`score`, less a penalty for each slice on which the blend does worse than its floor: its best single part
    (a hybrid must never lose to one of its own parts), and on the cold slice COLD_OVER_POPULAR times popularity."""
    shortfall = max(floor[0] - report.ndcg, 0.0) / max(floor[0], 1e-6)
    if report.cold.users:
        shortfall += max(floor[1] - report.ndcg_cold, 0.0) / max(floor[1], 1e-6)
    return score(report) - 100.0 * shortfall


def blend_knobs(params: TrainingParams) -> Blend3:
    return params.alpha, params.popularity_prior, params.cf_prior
