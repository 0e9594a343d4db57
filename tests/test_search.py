"""The configuration search (training/tuning.py): fits judged early and stopped, the portfolio tried first,
determinism for a seed, the serving budget, and its progress by minutes."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pytest

from recommender.model.catalogue import Catalogue
from recommender.model.content import ContentModel
from recommender.model.cost import request_madds
from recommender.model.dataset import TrainingData
from recommender.model.evaluation import Split, split
from recommender.model.fit import fit_content
from recommender.model.params import ALSParams, SplitParams, TrainingParams
from recommender.storage import demo
from recommender.training import blends
from recommender.training.blends import best_blend, blend_floor
from recommender.training.costs import best_within, request_cost, typical_history
from recommender.training.trials import Trial, fit_and_measure
from recommender.training.tuning import Search, als_knobs, progress, tune

START = TrainingParams(als=ALSParams(factors=8, iterations=6))
Prepared = tuple[Split, tuple[Catalogue, ContentModel]]
PORTFOLIO = ({"factors": 24, "regularization": 2.0, "iterations": 9, "confidence": 3.0, "rating_scale": 1.5},)


@pytest.fixture(scope="module")
def prepared() -> Prepared:
    catalogue = demo.generate(11, 300, 240, 6000)
    data = TrainingData.from_interactions(catalogue.books, catalogue.interactions)
    return split(data, SplitParams(seed=5, min_positives=4)), fit_content(data.books, START)


def _search(prepared: Prepared, **changes: object) -> tuple[Trial, list[Trial]]:
    the_split, content = prepared
    search = dataclasses.replace(Search(6, 600.0, seed=3, blend=False, portfolio=PORTFOLIO), **changes)  # type: ignore[arg-type]
    return tune(the_split, START, content, search)


def test_a_search_judges_fits_early_and_is_deterministic_for_a_seed(
    prepared: Prepared,
) -> None:
    best, tried = _search(prepared)
    again_best, again = _search(prepared)
    assert [(t.params, t.fidelity) for t in tried] == [(t.params, t.fidelity) for t in again]
    assert again_best.params == best.params
    stopped = [t for t in tried if not t.full]
    assert stopped and all(0 < t.fidelity < 1 for t in stopped)
    # More configurations looked at than full fits' worth spent, and the one chosen was fitted in full.
    assert len(tried) > 6 and best.full
    spent = sum(1.0 if t.full else 3 / t.params.als.iterations for t in tried)
    assert spent < 6 + 1
    assert best.score == max(t.score for t in tried if t.full)
    # Without halving, every fit is finished.
    _plain_best, plain = _search(prepared, halving=False, trials=4)
    assert len(plain) == 4 and all(t.full for t in plain)


def test_the_known_configurations_come_first_then_the_portfolio(prepared: Prepared) -> None:
    _best, tried = _search(prepared, trials=2)
    assert tried[0].params == START
    assert als_knobs(tried[1].params) == PORTFOLIO[0]


def test_a_configuration_over_the_serving_budget_is_never_chosen(prepared: Prepared) -> None:
    the_split, _content = prepared
    _free, unbounded = _search(prepared)
    costs = {t.params: request_cost(t.model, typical_history(the_split)) for t in unbounded if t.full}
    best_free = max((t for t in unbounded if t.full), key=lambda t: t.score)
    budget = costs[best_free.params] * 0.999  # the best fit without a budget is over this one
    assert min(costs.values()) < budget
    best, tried = _search(prepared, cost_budget=budget)
    finished = [t for t in tried if t.full]
    assert all(t.cost == costs.get(t.params, t.cost) and t.cost is not None and t.cost > 0 for t in finished)
    assert best.cost is not None and best.cost <= budget and best.params != best_free.params
    # The rule, on those trials with costs set: the best scoring one over the budget loses to every one within.
    ranked = sorted(finished, key=lambda t: -t.score)
    costly = [dataclasses.replace(t, cost=5.0 if t is ranked[0] else 1.0) for t in ranked]
    assert best_within(costly, None).params == ranked[0].params
    assert best_within(costly, 2.0).params == ranked[1].params
    # None within: the cheapest.
    assert best_within(costly, 0.5).cost == 1.0


def test_the_same_data_and_seed_release_the_same_configuration_on_a_machine_three_times_slower(
    prepared: Prepared, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No timing decides what a search releases: with every clock the search reads running three times slower
    (each timing three times longer), the same fits are tried and the same configuration chosen, budget or not."""
    the_split, _content = prepared
    _free, unbounded = _search(prepared)
    budget = sorted(request_cost(t.model, typical_history(the_split)) for t in unbounded if t.full)[1]
    here = [_search(prepared, blend=True, blend_trials=6, **changes) for changes in ({}, {"cost_budget": budget})]
    read = 0
    real_perf_counter, real_monotonic = time.perf_counter, time.monotonic

    def slow(clock: Callable[[], float]) -> Callable[[], float]:
        def slowed() -> float:
            nonlocal read
            read += 1
            return 3.0 * clock()

        return slowed

    monkeypatch.setattr(time, "perf_counter", slow(real_perf_counter))
    monkeypatch.setattr(time, "monotonic", slow(real_monotonic))
    slower = [_search(prepared, blend=True, blend_trials=6, **changes) for changes in ({}, {"cost_budget": budget})]
    assert read > 0  # the searches read the slowed clocks
    for (best, tried), (slow_best, slow_tried) in zip(here, slower, strict=True):
        assert slow_best.params == best.params
        assert [t.params for t in slow_tried] == [t.params for t in tried]


def test_a_requests_cost_is_counted_from_the_models_shape_and_grows_with_its_factors() -> None:
    costs = [request_madds(10_000, factors, 64, 30.0) for factors in (16, 64, 128, 256, 512)]
    assert costs == sorted(costs) and len(set(costs)) == len(costs)
    assert request_madds(10_000, 400, 64, 30.0) > 10_000 * 400  # the scan alone reads every book's factors
    # A history longer than the factors costs the direct solve, and never less than a shorter one.
    assert request_madds(10_000, 32, 64, 40.0) >= request_madds(10_000, 32, 64, 31.0)


def test_progress_is_the_best_finished_fit_by_minutes(prepared: Prepared) -> None:
    _best, tried = _search(prepared)
    points = progress(tried)
    assert len(points) == sum(t.full for t in tried)
    minutes = [m for m, _ in points]
    assert minutes == sorted(minutes)
    values = [v for _, v in points]
    best_by_score = max((t for t in tried if t.full), key=lambda t: t.score)
    assert values[-1] == best_by_score.metrics.ndcg


def test_the_blend_search_beats_every_known_blend_within_its_passes(
    prepared: Prepared, monkeypatch: pytest.MonkeyPatch
) -> None:
    the_split, content = prepared
    fitted = fit_and_measure(the_split, START, content, lambda: False, parts=True)
    floor = blend_floor(fitted, the_split)
    known = [(0.6, 2.0, 3.0), (1.0, 0.0, 0.0), (1.0, 50.0, 0.0)]
    passes = 0
    measure = blends.measure

    def counted(*args: object) -> object:
        nonlocal passes
        passes += 1
        return measure(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(blends, "measure", counted)
    chosen = best_blend(fitted, the_split, floor, known, 12, float("inf"))
    assert passes <= 12
    best_known = max(blends.above_floor(blends.measure(fitted.model.with_blend(*b), the_split), floor) for b in known)
    assert blends.above_floor(chosen.metrics, floor) >= best_known
    again = best_blend(fitted, the_split, floor, known, 12, float("inf"))
    assert again.params == chosen.params  # deterministic
    # No time left: the fit as it is.
    assert best_blend(fitted, the_split, floor, known, 12, 0.0) is fitted
