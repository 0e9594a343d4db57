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
(millions of multiply-adds: the same on every machine) is never released.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recommender.model.catalogue import Catalogue
from recommender.model.content import ContentModel
from recommender.model.evaluation import Split
from recommender.model.hybrid import HybridModel
from recommender.model.params import ALSParams, TrainingParams, TuningPolicy
from recommender.training.blends import (
    BLEND_PORTFOLIO,
    PARTS_AS_BLENDS,
    best_blend,
    blend_floor,
    blend_knobs,
)
from recommender.training.costs import best_within, over, request_cost, typical_history
from recommender.training.ranker import InnerTrees, best_ranker
from recommender.training.signal_weights import best_signals
from recommender.training.trials import Trial, fit_and_measure, measure, score

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Search:
    trials: int  # full fits' worth it may spend (a fit judged early costs its share of one)
    seconds: float | None  # and no longer than this (None: no cap; the trials bound it)
    seed: int
    blend: bool = True  # alpha and the priors too (else they stay as given)
    blend_trials: int = 30  # blends of the best fit tried (each a ranking pass, no fit)
    halving: bool = True  # judge each fit early and finish only the promising ones (else every fit in full)
    portfolio: tuple[dict[str, Any], ...] = PORTFOLIO  # tried after the known configurations, before proposals
    cost_budget: float | None = None  # millions of multiply-adds a request's model maths may take (None: any)
    signals: bool = True  # the weights of the reader's book signals too, after the blend

    @classmethod
    def of(cls, policy: TuningPolicy, seed: int, first: bool = True) -> Search:
        """The search a policy allows: a first version's (and `recommender tune`'s), or a later retrain's."""
        trials = policy.trials if first else policy.retrain_trials
        return cls(
            trials, policy.seconds, seed, policy.blend, halving=policy.halving,
            cost_budget=policy.cost_budget, signals=policy.book_signals,
        )  # fmt: skip


def tune(
    split: Split,
    start: TrainingParams,
    fitted_content: tuple[Catalogue, ContentModel],
    search: Search,
    should_stop: Callable[[], bool] = lambda: False,
    first: Trial | None = None,
    earlier: Sequence[TrainingParams] = (),
    inner: InnerTrees | None = None,
) -> tuple[Trial, list[Trial]]:
    """The best configuration within the search's budgets, and every fit it tried (and the chosen blend). Two
    stages, each with the known configurations tried first (`start`, the active version's choice or
    the configured one; `earlier`, the best of earlier searches; then the search's portfolio; `first`, when given,
    is `start` measured already):

    1. the fits: ALS's knobs (`Fits`), proposed by Optuna's TPE. A finished fit over `search.cost_budget` per
       request (training/costs.py) is infeasible: never chosen;
    2. the blend of the best fit: alpha and the two priors, each a ranking pass without a fit, by `best_blend` from
       the known blends and BLEND_PORTFOLIO (with `search.blend`);
    3. then the weights of the reader's book signals, by `best_signals`, and the learned stage over them, by
       `best_ranker` (both with `search.signals`), its trees `inner`'s (the ones the gate fitted for the active
       configuration, when the search keeps it).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fits = Fits(split, start, fitted_content, search, should_stop, first)
    known_fits = [als_knobs(p) for p in (start, *earlier)] + list(search.portfolio)
    pruner = optuna.pruners.SuccessiveHalvingPruner(
        min_resource=LOOK_AFTER, reduction_factor=REDUCTION, min_early_stopping_rate=0
    ) if search.halving else optuna.pruners.NopPruner()  # fmt: skip
    _study(search, known_fits, fits.fit, fits.more, fits.deadline, pruner)
    tried = fits.results()
    best = best_within(tried, search.cost_budget)
    if not search.blend:
        return best, tried
    known = [*(blend_knobs(p) for p in (best.params, start, *earlier)), *BLEND_PORTFOLIO, *PARTS_AS_BLENDS]
    floor = blend_floor(best, split)
    chosen = best_blend(best, split, floor, known, search.blend_trials, fits.deadline, should_stop)
    if search.signals:
        chosen = best_signals(chosen, split, floor, fits.deadline, should_stop)
        inner = inner or InnerTrees(split, fitted_content, should_stop)
        chosen = best_ranker(chosen, inner, floor, fits.deadline)
    chosen = dataclasses.replace(chosen, elapsed=time.perf_counter() - fits.started)
    return chosen, [*tried, *([chosen] if chosen is not best else [])]


class Fits:
    """The fit stage of a search: each proposal of ALS's knobs fitted and measured. With `search.halving`, a fit
    is judged after LOOK_AFTER iterations on a sample of the readers, and stopped unless it is in the best
    1/REDUCTION of the fits judged there so far (Optuna's successive halving pruner): many configurations looked at
    cheaply, full fits spent on the promising ones. Its spending is counted in full fits' worth."""

    def __init__(
        self,
        split: Split,
        start: TrainingParams,
        fitted_content: tuple[Catalogue, ContentModel],
        search: Search,
        should_stop: Callable[[], bool],
        first: Trial | None,
    ) -> None:
        self._split, self._start, self._content, self._search = split, start, fitted_content, search
        self._should_stop, self._first = should_stop, first
        self.started = time.perf_counter()
        self.deadline = math.inf if search.seconds is None else self.started + search.seconds
        self.tried: dict[int, Trial] = {}
        self._sample = _sample(split, search.seed)
        self._history = typical_history(split)
        self._spent = 0.0  # full fits' worth

    def more(self) -> bool:
        """Whether to go on: budget left (a sampler that keeps proposing measured configurations spends nothing:
        the count of proposals bounds it too)."""
        return self._spent < self._search.trials and len(self.tried) < 10 * self._search.trials

    def results(self) -> list[Trial]:
        """Every fit tried."""
        return list(self.tried.values())

    def fit(self, proposal: Any) -> float:
        """What the sampler learns of `proposal`: the score of its fit (see `_feasible`)."""
        params = dataclasses.replace(self._start, als=_proposed_als(proposal, self._start))
        known = [t for t in (self._first, *self.tried.values()) if t is not None and t.params == params and t.full]
        if known:
            self.tried[proposal.number] = known[0]
            return _feasible(known[0], self._search)
        trial = self._fitted(proposal, params)
        if self._search.cost_budget is not None:
            trial = dataclasses.replace(trial, cost=request_cost(trial.model, self._history))
        self.tried[proposal.number] = trial
        log.info("tuning: trial %d, %s", proposal.number, trial.describe())
        return _feasible(trial, self._search)

    def _fitted(self, proposal: Any, params: TrainingParams) -> Trial:
        """`params` fitted and measured; optuna.TrialPruned (the fit judged early kept in `tried`) when the pruner
        stops it at its look."""
        import optuna

        look_at = LOOK_AFTER if self._search.halving and params.als.iterations > LOOK_AFTER else None
        began = time.perf_counter()

        def look(model: HybridModel) -> None:
            report = measure(model, self._sample)
            proposal.report(score(report), step=LOOK_AFTER)
            if proposal.should_prune():
                share = LOOK_AFTER / params.als.iterations
                fidelity = share * self._sample.num_users / max(self._split.num_users, 1)
                now = time.perf_counter()
                self.tried[proposal.number] = Trial(
                    params, model, report, now - began, fidelity=fidelity, elapsed=now - self.started
                )
                raise optuna.TrialPruned()

        try:
            looks = {look_at: look} if look_at else None
            trial = fit_and_measure(self._split, params, self._content, self._should_stop, looks=looks)
        except optuna.TrialPruned:
            self._spent += LOOK_AFTER / params.als.iterations
            log.info("tuning: trial %d, %s", proposal.number, self.tried[proposal.number].describe())
            raise
        self._spent += 1.0
        return dataclasses.replace(trial, elapsed=time.perf_counter() - self.started)


def _feasible(trial: Trial, search: Search) -> float:
    """What the sampler learns of a finished fit: its score, far below every feasible one's when it costs more
    per request than the budget allows."""
    return trial.score - (100.0 if over(trial, search.cost_budget) else 0.0)


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
