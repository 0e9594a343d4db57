"""What a request costs with a configuration, judged by a curve through every finished fit's measured cost, and
the best fit that serves within a budget."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.optimize

from recommender.training.trials import Trial

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CostCurve:
    """A request's cost by the model's factors: c0 + c1 k + c2 k^2 (none negative: scipy's nnls) through every
    finished fit's measured cost. For one catalogue and its readers the cost depends on the factors alone, while
    one measurement on a shared machine can be a third off (what else runs meanwhile): judged by the curve through
    all of them, a fit near the budget is not kept or dropped by the luck of its own measurement."""

    points: tuple[tuple[int, float], ...] = ()

    def with_point(self, factors: int, ms: float) -> CostCurve:
        return CostCurve((*self.points, (factors, ms)))

    def at(self, factors: int) -> float:
        return float(self._coefficients @ _powers(factors))

    def describe(self) -> str:
        return ", ".join(f"{self.at(k):.2f} ms at {k} factors" for k in (16, 64, 256, 512))

    @functools.cached_property
    def _coefficients(self) -> npt.NDArray[np.float64]:
        basis = np.array([_powers(k) for k, _ms in self.points])
        coefficients, _residual = scipy.optimize.nnls(basis, np.array([ms for _k, ms in self.points]))
        return np.asarray(coefficients)


def _powers(factors: int) -> npt.NDArray[np.float64]:
    scaled = factors / 512  # columns of like size, for the solver
    return np.array([1.0, scaled, scaled * scaled])


def costed(trial: Trial, costs: CostCurve) -> Trial:
    if not trial.full or trial.cost_ms is None:
        return trial
    return dataclasses.replace(trial, cost_ms=costs.at(trial.params.als.factors))


def over(trial: Trial, budget_ms: float | None) -> bool:
    return budget_ms is not None and trial.cost_ms is not None and trial.cost_ms > budget_ms


def best_within(fits: Iterable[Trial], budget_ms: float | None) -> Trial:
    """The best finished fit that serves within the budget (or, when none does, the cheapest one)."""
    finished = [t for t in fits if t.full]
    feasible = [t for t in finished if not over(t, budget_ms)]
    if feasible:
        return max(feasible, key=lambda t: t.score)
    cheapest = min(finished, key=lambda t: t.cost_ms or 0.0)
    log.warning(
        "tuning: no configuration served within %.2f ms a request; the cheapest (%.2f ms) is chosen",
        budget_ms or 0.0, cheapest.cost_ms or 0.0,
    )  # fmt: skip
    return cheapest
