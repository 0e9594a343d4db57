"""Measuring a configuration on a held-out split, and searching for a better one with Optuna's TPE sampler.

What a search maximises is `score`: the logarithms of NDCG@10 on the warm slice and on the cold slice (readers cut to
three books), added, so that a configuration wins by serving both, each by its relative gain (the cold slice's
values are a fraction of the warm one's, and would count for little in a plain sum); a blend that does worse than
one of its own parts on either slice is penalised. A search spends a number of fits (trials) and then re-blends the
best fit (no fit needed), bounded by a time cap too; it tries the active version's configuration and the best
earlier trials first (warm start), then lets the sampler propose, and is deterministic for a seed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from recommender.model.content import ContentModel
from recommender.model.evaluation import IntArray, K, Ranker, Report, Split, evaluate
from recommender.model.fit import train
from recommender.model.hybrid import Catalogue, HybridModel
from recommender.model.params import ALSParams, TrainingParams
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
    model: HybridModel  # fitted on the split's training part
    metrics: Report
    seconds: float
    parts: dict[str, Report] | None = None  # measure_parts of the model, when measured in the same pass

    @property
    def score(self) -> float:
        return score(self.metrics)

    def measured_parts(self, split: Split) -> dict[str, Report]:
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


@dataclass(frozen=True)
class Search:
    trials: int  # fits it may spend
    seconds: float  # and no longer than this
    seed: int
    blend: bool = True  # alpha and the priors too (else they stay as given)
    blend_trials: int = 30  # blends of the best fit tried (each a ranking pass, no fit)


def tune(
    split: Split,
    start: TrainingParams,
    fitted_content: tuple[Catalogue, ContentModel],
    search: Search,
    should_stop: Callable[[], bool] = lambda: False,
    first: Trial | None = None,
    earlier: Sequence[TrainingParams] = (),
) -> tuple[Trial, list[Trial]]:
    """The best configuration within the search's budget, and every fit it tried (and the chosen blend). Two
    stages, each Optuna's TPE with the known configurations tried first (`start`, the active version's choice or
    the configured one, and `earlier`, the best of earlier searches; `first`, when given, is `start` measured
    already):

    1. the fits: ALS's knobs, each trial a fit, with `start`'s blend;
    2. the blend of the best fit: alpha and the two priors, each trial a ranking pass without a fit (with
       `search.blend`).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    deadline = time.perf_counter() + search.seconds
    fits: dict[int, Trial] = {}

    def fit(proposal: optuna.Trial) -> float:
        params = dataclasses.replace(start, als=_proposed_als(proposal, start))
        known = [t for t in (first, *fits.values()) if t is not None and t.params == params]
        fits[proposal.number] = known[0] if known else fit_and_measure(split, params, fitted_content, should_stop)
        return fits[proposal.number].score

    best_fit = _study(search, [_als_knobs(p) for p in (start, *earlier)], fit, search.trials, deadline)
    best = fits[best_fit]
    if not search.blend:
        return best, list(fits.values())
    blends: dict[int, Trial] = {}
    parts = best.measured_parts(split)
    floor = (max(parts[p].ndcg for p in SINGLE_PARTS), max(parts[p].ndcg_cold for p in SINGLE_PARTS))

    def blend(proposal: optuna.Trial) -> float:
        model = best.model.with_blend(**_proposed_blend(proposal))
        params = model.meta.params
        same = params == best.params
        blends[proposal.number] = best if same else Trial(params, model, measure(model, split), best.seconds)
        return _above(blends[proposal.number].metrics, floor)

    # The parts themselves are blends too (CF alone; mostly popularity): tried first, a blend that loses to them
    # never wins.
    parts_as_blends = [
        {"alpha": 1.0, "popularity_prior": 0.0, "cf_prior": 0.0},
        {"alpha": 1.0, "popularity_prior": 50.0, "cf_prior": 0.0},
    ]
    known = [_blend_knobs(p) for p in (best.params, start, *earlier)] + parts_as_blends
    chosen = blends[_study(search, known, blend, search.blend_trials, deadline)]
    return chosen, [*fits.values(), *([chosen] if chosen is not best else [])]


SINGLE_PARTS = ("cf", "content", "popularity")


def _above(report: Report, floor: tuple[float, float]) -> float:
    """`score`, less a penalty for each slice on which the blend does worse than its best single part (a hybrid
    must never lose to one of its own parts)."""
    shortfall = max(floor[0] - report.ndcg, 0.0) / max(floor[0], 1e-6)
    if report.cold.users:
        shortfall += max(floor[1] - report.ndcg_cold, 0.0) / max(floor[1], 1e-6)
    return score(report) - 100.0 * shortfall


def _study(
    search: Search, known: list[dict[str, Any]], objective: Callable[[Any], float], trials: int, deadline: float
) -> int:
    """Runs `objective` for up to `trials` proposals (the `known` ones first) until the deadline; returns the
    number of the best trial."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=max(2, trials // 4))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for knobs in known:
        study.enqueue_trial(knobs, skip_if_exists=True)
    for _ in range(max(trials, 1)):
        study.optimize(objective, n_trials=1)
        if time.perf_counter() > deadline:
            log.info("tuning: the time cap of %.0f s is spent after %d trials", search.seconds, len(study.trials))
            break
    return int(study.best_trial.number)


def _als_knobs(params: TrainingParams) -> dict[str, Any]:
    als = params.als
    return {
        "factors": als.factors,
        "regularization": als.regularization,
        "iterations": als.iterations,
        "confidence": als.confidence,
        "rating_scale": als.rating_scale,
    }


def _blend_knobs(params: TrainingParams) -> dict[str, Any]:
    return {"alpha": params.alpha, "popularity_prior": params.popularity_prior, "cf_prior": params.cf_prior}


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


def _proposed_blend(proposal: Any) -> dict[str, float]:
    return {
        "alpha": proposal.suggest_float("alpha", 0.0, 1.0),
        "popularity_prior": proposal.suggest_float("popularity_prior", 0.0, 50.0),
        "cf_prior": proposal.suggest_float("cf_prior", 0.0, 50.0),
    }
