"""Measuring a configuration on a held-out split, and searching for a better one: ALS's knobs with Optuna's TPE
sampler, then the blend of the best fit with Nelder-Mead.

What a search maximises is `score`: the logarithms of NDCG@10 on the warm slice and on the cold slice (readers cut to
three books), added, so that a configuration wins by serving both, each by its relative gain (the cold slice's
values are a fraction of the warm one's, and would count for little in a plain sum); a blend that does worse than
one of its own parts on either slice (or, on the cold slice, than COLD_OVER_POPULAR times popularity) is penalised.
A search spends a number of full fits' worth (trials), judging each fit early on a sample and finishing only the
promising ones (successive halving), and then re-blends the best fit (no fit needed), bounded by a time cap too;
each stage tries the active version's choice, the best earlier
trials and a portfolio that did well on the public data sets first (warm start), and is deterministic for a seed. A
configuration whose request costs more than the serving budget (by a cost curve through every fit's measured cost)
is never released.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.optimize
from threadpoolctl import threadpool_limits

from recommender.model.content import ContentModel
from recommender.model.evaluation import IntArray, K, Ranker, Report, Split, evaluate
from recommender.model.fit import TrainingCancelled, train
from recommender.model.hybrid import Catalogue, HybridModel, warm
from recommender.model.params import ALSParams, TrainingParams, TuningPolicy
from recommender.model.ranking import Mode

log = logging.getLogger(__name__)

PART_NAMES = {Mode.HYBRID: "hybrid", Mode.CF: "cf", Mode.CONTENT: "content", Mode.POPULAR: "popularity"}


def measure_modes(model: HybridModel, split: Split, modes: tuple[Mode, ...]) -> dict[Mode, Report]:
    """The metrics of `model` (fitted on `split.train`) ranking by each mode, on the split's held-out books."""
    users = list(split.held_out)
    return {
        mode: evaluate(_lookup(dict(zip(users, lists, strict=True))), split, model.num_books)
        for mode, lists in model.top_books(users, K, modes).items()
    }


def _lookup(ranked: dict[int, IntArray]) -> Ranker:
    return lambda user, _k: ranked[user]


def measure(model: HybridModel, split: Split, mode: Mode = Mode.HYBRID) -> Report:
    return measure_modes(model, split, (mode,))[mode]


def measure_parts(model: HybridModel, split: Split) -> dict[str, Report]:
    """The blend, each of its parts, and popularity, on the same split (one scoring pass)."""
    return {PART_NAMES[mode]: m for mode, m in measure_modes(model, split, tuple(PART_NAMES)).items()}


def score(report: Report) -> float:
    """What a search maximises: both slices' NDCG@10, by their relative gains."""
    if not report.cold.users:
        return math.log(max(report.ndcg, 1e-6))
    return math.log(max(report.ndcg, 1e-6)) + math.log(max(report.ndcg_cold, 1e-6))


@dataclass(frozen=True)
class Trial:
    params: TrainingParams
    model: HybridModel  # fitted on the split's training part (a judged-early one: as far as it got)
    metrics: Report
    seconds: float
    parts: dict[str, Report] | None = None  # measure_parts of the model, when measured in the same pass
    fidelity: float = 1.0  # the share of a full look: 1 for every iteration on every reader
    elapsed: float = 0.0  # seconds since its search started, when it ended
    cost_ms: float | None = None  # a request's model maths with it (ranking and `because`), when measured

    @property
    def score(self) -> float:
        return score(self.metrics)

    @property
    def full(self) -> bool:
        return self.fidelity >= 1.0

    def measured_parts(self, split: Split) -> dict[str, Report]:
        return self.parts if self.parts is not None else measure_parts(self.model, split)

    def describe(self) -> str:
        cost = "" if self.cost_ms is None else f", {self.cost_ms:.2f} ms a request"
        how = "in full" if self.full else f"judged early at fidelity {self.fidelity:.2f}"
        return (
            f"{_knobs_text(self.params)}: NDCG@10 {self.metrics.ndcg:.4f}, cold {self.metrics.ndcg_cold:.4f}, "
            f"{how}, {self.seconds:.1f} s{cost}"
        )


def fit_and_measure(
    split: Split,
    params: TrainingParams,
    fitted_content: tuple[Catalogue, ContentModel],
    should_stop: Callable[[], bool],
    parts: bool = False,
    looks: Mapping[int, Callable[[HybridModel], None]] | None = None,
) -> Trial:
    """`parts`: measure the blend's parts too, in the same scoring pass (for a trial likely to be released, whose
    parts would otherwise take a second pass). `looks`: see `train`."""
    started = time.perf_counter()
    model = train(split.train, params, should_stop, fitted_content, looks)
    if not parts:
        return Trial(params, model, measure(model, split), time.perf_counter() - started)
    measured = measure_parts(model, split)
    return Trial(params, model, measured["hybrid"], time.perf_counter() - started, measured)


def request_cost_ms(model: HybridModel, users: Sequence[int], repeats: int = 3) -> float:
    """The milliseconds of one `Recommend`'s model maths with `model` (ten books, ranked and explained), one
    request at a time on one thread: the median over `users` of each one's fastest of `repeats` (the fastest, so
    that what else the machine does, a service beside a retrain, does not count as the model's cost)."""
    warm(model)
    spent = []
    with threadpool_limits(1, "blas"):
        for user in users:
            fastest = math.inf
            for _ in range(repeats):
                started = time.perf_counter()
                model.recommend(int(user), K)
                fastest = min(fastest, time.perf_counter() - started)
            spent.append(fastest)
    return 1000.0 * float(np.median(spent)) if spent else 0.0


# Known-good configurations (ALS's knobs), tried before the sampler proposes: chosen across the public data sets
# by bench/portfolio.py (README, "How the search chooses"; bench/results/portfolio.md).
PORTFOLIO: tuple[dict[str, Any], ...] = (
    {"factors": 230, "regularization": 14.2, "iterations": 12, "confidence": 0.384, "rating_scale": 4.46},
    {"factors": 240, "regularization": 20.1, "iterations": 14, "confidence": 0.536, "rating_scale": 4.1},
    {"factors": 222, "regularization": 22.3, "iterations": 9, "confidence": 1.34, "rating_scale": 1.4},
    {"factors": 224, "regularization": 21.0, "iterations": 8, "confidence": 0.551, "rating_scale": 5.15},
)

LOOK_AFTER = 3  # ALS iterations before a fit is first judged ...
LOOK_READERS = 1 / 3  # ... on this share of the evaluated readers (at least LOOK_FEWEST)
LOOK_FEWEST = 300
REDUCTION = 3  # successive halving: a fit goes on only while it is in the best third of those judged at its look
COST_READERS = 30  # readers a configuration's cost per request is measured on


@dataclass(frozen=True)
class Search:
    trials: int  # full fits' worth it may spend (a fit judged early costs its share of one)
    seconds: float  # and no longer than this
    seed: int
    blend: bool = True  # alpha and the priors too (else they stay as given)
    blend_trials: int = 30  # blends of the best fit tried (each a ranking pass, no fit)
    halving: bool = True  # judge each fit early and finish only the promising ones (else every fit in full)
    portfolio: tuple[dict[str, Any], ...] = PORTFOLIO  # tried after the known configurations, before proposals
    latency_budget_ms: float | None = None  # a request's model maths may cost this much (None: any)

    @classmethod
    def of(cls, policy: TuningPolicy, seed: int, first: bool = True) -> Search:
        """The search a policy allows: a first version's (and `recommender tune`'s), or a later retrain's."""
        trials = policy.trials if first else policy.retrain_trials
        return cls(
            trials, policy.seconds, seed, policy.blend, halving=policy.halving,
            latency_budget_ms=policy.latency_budget_ms,
        )  # fmt: skip


def tune(
    split: Split,
    start: TrainingParams,
    fitted_content: tuple[Catalogue, ContentModel],
    search: Search,
    should_stop: Callable[[], bool] = lambda: False,
    first: Trial | None = None,
    earlier: Sequence[TrainingParams] = (),
) -> tuple[Trial, list[Trial]]:
    """The best configuration within the search's budgets, and every fit it tried (and the chosen blend). Two
    stages, each with the known configurations tried first (`start`, the active version's choice or
    the configured one; `earlier`, the best of earlier searches; then the search's portfolio; `first`, when given,
    is `start` measured already):

    1. the fits: ALS's knobs. With `search.halving`, each fit is judged after LOOK_AFTER iterations on a sample of
       the readers, and stopped unless it is in the best 1/REDUCTION of the fits judged there so far (Optuna's
       successive halving pruner): many configurations looked at cheaply, full fits spent on the promising ones,
       proposed by Optuna's TPE. A finished fit over `search.latency_budget_ms` per request (by the CostCurve) is
       infeasible: never chosen;
    2. the blend of the best fit: alpha and the two priors, each a ranking pass without a fit, by `best_blend` from
       the known blends and BLEND_PORTFOLIO (with `search.blend`).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    deadline = started + search.seconds
    fits: dict[int, Trial] = {}
    sample = _sample(split, search.seed)
    costed = sample_users(split, search.seed, COST_READERS)
    spent = 0.0  # full fits' worth
    costs = CostCurve()

    def fit(proposal: optuna.Trial) -> float:
        nonlocal spent, costs
        params = dataclasses.replace(start, als=_proposed_als(proposal, start))
        known = [t for t in (first, *fits.values()) if t is not None and t.params == params and t.full]
        if known:
            fits[proposal.number] = known[0]
            return _feasible(known[0], search)
        look_at = LOOK_AFTER if search.halving and params.als.iterations > LOOK_AFTER else None

        def look(model: HybridModel) -> None:
            report = measure(model, sample)
            proposal.report(score(report), step=LOOK_AFTER)
            if proposal.should_prune():
                share = LOOK_AFTER / params.als.iterations
                fidelity = share * sample.num_users / max(split.num_users, 1)
                fits[proposal.number] = Trial(
                    params, model, report, time.perf_counter() - began, fidelity=fidelity,
                    elapsed=time.perf_counter() - started,
                )  # fmt: skip
                raise optuna.TrialPruned()

        began = time.perf_counter()
        try:
            trial = fit_and_measure(
                split, params, fitted_content, should_stop, looks={look_at: look} if look_at else None
            )
        except optuna.TrialPruned:
            spent += LOOK_AFTER / params.als.iterations
            log.info("tuning: trial %d, %s", proposal.number, fits[proposal.number].describe())
            raise
        spent += 1.0
        trial = dataclasses.replace(trial, elapsed=time.perf_counter() - started)
        measured = ""
        if search.latency_budget_ms is not None:
            cost = request_cost_ms(trial.model, costed)
            costs = costs.with_point(params.als.factors, cost)
            trial = dataclasses.replace(trial, cost_ms=costs.at(params.als.factors))
            measured = f" (this fit measured {cost:.2f} ms)"
        fits[proposal.number] = trial
        log.info("tuning: trial %d, %s%s", proposal.number, trial.describe(), measured)
        return _feasible(trial, search)

    known_fits = [als_knobs(p) for p in (start, *earlier)] + list(search.portfolio)
    pruner = optuna.pruners.SuccessiveHalvingPruner(
        min_resource=LOOK_AFTER, reduction_factor=REDUCTION, min_early_stopping_rate=0
    ) if search.halving else optuna.pruners.NopPruner()  # fmt: skip
    # A sampler that keeps proposing measured configurations spends nothing: the count of proposals bounds it too.
    _study(search, known_fits, fit, lambda: spent < search.trials and len(fits) < 10 * search.trials, deadline, pruner)
    if costs.points:  # every finished fit's cost as the curve through all of them reads it
        fits = {n: _costed(t, costs) for n, t in fits.items()}
        log.info("tuning: a request costs %s", costs.describe())
    best = best_within(fits.values(), search.latency_budget_ms)
    if not search.blend:
        return best, list(fits.values())
    known = [*(_blend_knobs(p) for p in (best.params, start, *earlier)), *BLEND_PORTFOLIO, *PARTS_AS_BLENDS]
    floor = blend_floor(best, split)
    chosen = best_blend(best, split, floor, known, search.blend_trials, deadline, should_stop)
    chosen = dataclasses.replace(chosen, elapsed=time.perf_counter() - started)
    return chosen, [*fits.values(), *([chosen] if chosen is not best else [])]


Blend3 = tuple[float, float, float]  # alpha, popularity prior, CF prior
PRIOR_MOST = 50.0
# Known-good blends, measured after the known ones: chosen across the public data sets by bench/blend_portfolio.py.
BLEND_PORTFOLIO: tuple[Blend3, ...] = ((0.664, 0.85, 7.61), (0.867, 0.0, 0.606), (0.635, 2.23, 3.54))
# The parts themselves are blends too (CF alone; mostly popularity): measured first, a blend that loses to them
# never wins.
PARTS_AS_BLENDS: tuple[Blend3, ...] = ((1.0, 0.0, 0.0), (1.0, PRIOR_MOST, 0.0))
FIRST_STEPS = (0.2, 0.7, 0.7)  # the first simplex's edges: alpha, then log(1 + prior) for each prior


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
    """The best blend of `best`'s fit (by `_above`) in `budget` ranking passes: the known blends, then scipy's
    Nelder-Mead from the best of them, on alpha and log(1 + prior) for the two priors. A blend is three knobs and a
    cheap, deterministic measurement with a steep edge where a slice falls below its floor, which a few dozen TPE
    proposals rarely find: on a MovieLens fit, Nelder-Mead reached a better `_above` in 30 passes than TPE in 60,
    and on it and on a Goodreads fit, than a 150-point grid. With no pass left, `best` as it is."""
    measured: dict[Blend3, Trial] = {_rounded(_blend_knobs(best.params)): best}
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
            measured[key] = Trial(model.meta.params, model, measure(model, split), best.seconds, cost_ms=best.cost_ms)
        return _above(measured[key].metrics, floor)

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
    return max(measured.values(), key=lambda t: _above(t.metrics, floor))


def _rounded(knobs: Blend3) -> Blend3:
    return round(knobs[0], 4), round(knobs[1], 4), round(knobs[2], 4)


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


def _costed(trial: Trial, costs: CostCurve) -> Trial:
    if not trial.full or trial.cost_ms is None:
        return trial
    return dataclasses.replace(trial, cost_ms=costs.at(trial.params.als.factors))


def _feasible(trial: Trial, search: Search) -> float:
    """What the sampler learns of a finished fit: its score, far below every feasible one's when it costs more
    per request than the budget allows."""
    return trial.score - (100.0 if _over(trial, search.latency_budget_ms) else 0.0)


def _over(trial: Trial, budget_ms: float | None) -> bool:
    return budget_ms is not None and trial.cost_ms is not None and trial.cost_ms > budget_ms


def best_within(fits: Iterable[Trial], budget_ms: float | None) -> Trial:
    """The best finished fit that serves within the budget (or, when none does, the cheapest one)."""
    finished = [t for t in fits if t.full]
    feasible = [t for t in finished if not _over(t, budget_ms)]
    if feasible:
        return max(feasible, key=lambda t: t.score)
    cheapest = min(finished, key=lambda t: t.cost_ms or 0.0)
    log.warning(
        "tuning: no configuration served within %.2f ms a request; the cheapest (%.2f ms) is chosen",
        budget_ms or 0.0, cheapest.cost_ms or 0.0,
    )  # fmt: skip
    return cheapest


def _sample(split: Split, seed: int) -> Split:
    """The split's evaluation on a share of its readers: where a fit is judged early."""
    wanted = max(LOOK_FEWEST, round(split.num_users * LOOK_READERS))
    users = set(sample_users(split, seed, wanted))
    return dataclasses.replace(split, held_out={u: b for u, b in split.held_out.items() if u in users})


def sample_users(split: Split, seed: int, count: int) -> list[int]:
    users = sorted(split.held_out)
    if len(users) <= count:
        return users
    return sorted(np.random.default_rng(seed).choice(users, size=count, replace=False).tolist())


SINGLE_PARTS = ("cf", "content", "popularity")
COLD_OVER_POPULAR = 1.1  # a blend's cold slice below this many times popularity's is penalised like a loss to a part


def _above(report: Report, floor: tuple[float, float]) -> float:
    """`score`, less a penalty for each slice on which the blend does worse than its floor: its best single part
    (a hybrid must never lose to one of its own parts), and on the cold slice COLD_OVER_POPULAR times popularity."""
    shortfall = max(floor[0] - report.ndcg, 0.0) / max(floor[0], 1e-6)
    if report.cold.users:
        shortfall += max(floor[1] - report.ndcg_cold, 0.0) / max(floor[1], 1e-6)
    return score(report) - 100.0 * shortfall


def _study(
    search: Search,
    known: list[dict[str, Any]],
    objective: Callable[[Any], float],
    more: Callable[[], bool],
    deadline: float,
    pruner: Any,
) -> None:
    """Runs `objective` on proposals (the `known` ones first) while `more()` says so, until the deadline."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=max(2, search.trials // 4))
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    for knobs in known:
        study.enqueue_trial(knobs, skip_if_exists=True)
    while True:
        study.optimize(objective, n_trials=1)
        if time.perf_counter() > deadline:
            log.info("tuning: the time cap of %.0f s is spent after %d trials", search.seconds, len(study.trials))
            break
        if not more():
            break


def als_knobs(params: TrainingParams) -> dict[str, Any]:
    als = params.als
    return {
        "factors": als.factors,
        "regularization": als.regularization,
        "iterations": als.iterations,
        "confidence": als.confidence,
        "rating_scale": als.rating_scale,
    }


def _knobs_text(params: TrainingParams) -> str:
    als = params.als
    return (
        f"{als.factors} factors, regularisation {als.regularization:.3g}, {als.iterations} iterations, "
        f"confidence {als.confidence:.3g}, rating scale {als.rating_scale:.2f}"
    )


def progress(tried: Sequence[Trial]) -> list[tuple[float, float]]:
    """The best NDCG@10 found by each minute of a search: (minutes since it started, the best finished fit's
    NDCG@10 so far), one point per finished fit, in time order."""
    best: Trial | None = None
    points = []
    for trial in sorted((t for t in tried if t.full), key=lambda t: t.elapsed):
        if best is None or trial.score > best.score:
            best = trial
        points.append((trial.elapsed / 60.0, best.metrics.ndcg))
    return points


def _blend_knobs(params: TrainingParams) -> Blend3:
    return params.alpha, params.popularity_prior, params.cf_prior


def _proposed_als(proposal: Any, start: TrainingParams) -> ALSParams:
    """ALS's knobs, on log scales where their effect is multiplicative."""
    return dataclasses.replace(
        start.als,
        factors=proposal.suggest_int("factors", 8, 512, log=True),
        regularization=proposal.suggest_float("regularization", 1e-3, 1e3, log=True),
        iterations=proposal.suggest_int("iterations", 5, 40),
        confidence=proposal.suggest_float("confidence", 0.05, 100.0, log=True),
        rating_scale=proposal.suggest_float("rating_scale", 0.0, 8.0),
    )
