"""Online metrics of a version (what readers did with the answers it gave) with their confidence intervals, and
the sequential test that compares a canary with the active version.

Per impression (one Recommend answer): whether any shown book was clicked, how many were read, and the reciprocal
rank of the first book clicked or read (0 when none). A version's metric is the ratio of their sum to the number of
impressions. Readers are assigned to a version as a whole (a canary's share is a set of users), and one reader's
impressions are alike, so the unit of analysis is the reader: each interval's variance is the cluster-robust
(delta-method) variance over readers, from per-reader sums. With one impression per reader it is the plain
variance of a mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from recommender.storage.sums import OnlineSums, Summed

Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float


def ratio(sums: OnlineSums, summed: Summed) -> tuple[float, float]:
    """The mean per impression and its cluster-robust variance: n/(n-1) * sum_u (x_u - R I_u)^2 / (sum_u I_u)^2."""
    if sums.impressions == 0:
        return 0.0, 0.0
    mean = summed.total / sums.impressions
    if sums.users < 2:
        return mean, 0.0
    deviations = summed.squares - 2 * mean * summed.cross + mean * mean * sums.impression_squares
    variance = max(0.0, deviations) * sums.users / ((sums.users - 1) * sums.impressions**2)
    return mean, variance


def click_through_rate(sums: OnlineSums) -> Interval:
    """Impressions with a click / impressions, with Wilson's score interval (sound at small counts and at rates
    near 0) on the effective number of impressions (fewer when readers' impressions are alike)."""
    rate, variance = ratio(sums, sums.clicks)
    if sums.impressions == 0:
        return Interval(0.0, 0.0, 0.0)
    n = rate * (1 - rate) / variance if variance > 0 else float(sums.impressions)
    n = min(n, float(sums.impressions)) if rate * (1 - rate) > 0 else float(sums.impressions)
    centre = (rate + Z_95**2 / (2 * n)) / (1 + Z_95**2 / n)
    half = Z_95 * math.sqrt(rate * (1 - rate) / n + Z_95**2 / (4 * n * n)) / (1 + Z_95**2 / n)
    return Interval(rate, max(0.0, centre - half), min(1.0, centre + half))


def reads_per_1000(sums: OnlineSums) -> Interval:
    mean = _normal(sums, sums.reads)
    return Interval(mean.value * 1000, mean.low * 1000, mean.high * 1000)


def mean_reciprocal_rank(sums: OnlineSums) -> Interval:
    return _normal(sums, sums.reciprocal_ranks, upper=1.0)


def _normal(sums: OnlineSums, summed: Summed, upper: float = math.inf) -> Interval:
    """A mean of non-negative values with the normal interval of its standard error."""
    mean, variance = ratio(sums, summed)
    half = Z_95 * math.sqrt(variance)
    return Interval(mean, max(0.0, mean - half), min(upper, mean + half))


def online_intervals(sums: OnlineSums) -> dict[str, Interval]:
    """Every online metric of `sums`, by name."""
    return {
        "click_through_rate": click_through_rate(sums),
        "reads_per_1000": reads_per_1000(sums),
        "mean_reciprocal_rank": mean_reciprocal_rank(sums),
    }


class Decision(StrEnum):
    PROMOTE = "promote"
    ABORT = "abort"
    WAIT = "wait"


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str
    difference: float  # canary's mean reciprocal rank less the active version's
    likelihood_ratio: float


@dataclass(frozen=True)
class SequentialTest:
    """Johari, Pekelis and Walsh's mixture sequential probability ratio test ("always valid" inference) on the
    difference in mean reciprocal rank: it may look after every impression and still says "different" wrongly at
    most `alpha` of the time. Differences are weighed with a normal prior of scale `effect_scale` (the size of
    effect worth finding fast). Until each arm has `min_impressions` from `min_users` readers (for the normal
    approximation) it waits; a
    canary that reaches `max_impressions` without a decisive test is aborted: the active version is the
    conservative choice."""

    alpha: float = 0.05
    effect_scale: float = 0.02
    min_impressions: int = 300
    min_users: int = 50
    max_impressions: int = 20_000

    def decide(self, canary: OnlineSums, active: OnlineSums) -> Verdict:
        difference = _mean_of(canary) - _mean_of(active)
        few = min(canary.impressions, active.impressions) < self.min_impressions
        if few or min(canary.users, active.users) < self.min_users:
            return Verdict(Decision.WAIT, "too few impressions yet", difference, 1.0)
        variance = _variance_of_mean(canary) + _variance_of_mean(active)
        ratio = self.likelihood_ratio(difference, variance)
        if ratio >= 1 / self.alpha:
            better = difference > 0
            return Verdict(
                Decision.PROMOTE if better else Decision.ABORT,
                f"the canary's mean reciprocal rank is {'higher' if better else 'lower'} by {abs(difference):.4f} "
                f"(likelihood ratio {ratio:.1f} >= {1 / self.alpha:.0f}, after {canary.impressions} canary and "
                f"{active.impressions} active impressions)",
                difference,
                ratio,
            )
        if canary.impressions >= self.max_impressions:
            return Verdict(
                Decision.ABORT,
                f"no decisive difference after {canary.impressions} canary impressions (difference "
                f"{difference:+.4f}, likelihood ratio {ratio:.1f}): the active version stays",
                difference,
                ratio,
            )
        return Verdict(Decision.WAIT, f"likelihood ratio {ratio:.2f} < {1 / self.alpha:.0f}", difference, ratio)

    def likelihood_ratio(self, difference: float, variance: float) -> float:
        """The mixture likelihood ratio of a difference with this variance, against no difference."""
        variance = max(variance, 1e-12)
        prior = self.effect_scale**2
        exponent = prior * difference**2 / (2 * variance * (variance + prior))
        return math.sqrt(variance / (variance + prior)) * math.exp(min(exponent, 700.0))


def _mean_of(sums: OnlineSums) -> float:
    return ratio(sums, sums.reciprocal_ranks)[0]


def _variance_of_mean(sums: OnlineSums) -> float:
    return ratio(sums, sums.reciprocal_ranks)[1]
