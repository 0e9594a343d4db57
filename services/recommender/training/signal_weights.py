"""The book-signal stage of a search: how much a reader's authors and series add to the blend (model/signals.py),
chosen for the search's best blend by ranking passes without a fit, one signal at a time, on the split's held-out
books. The blend alone (every weight zero) is always among those measured: a catalogue whose signals do not help
gets none."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from recommender.model.evaluation import Split
from recommender.model.fit import TrainingCancelled
from recommender.model.params import SignalWeights
from recommender.training.blends import above_floor
from recommender.training.trials import Trial, measure

log = logging.getLogger(__name__)

# The values tried for each weight in turn (the others at their best so far): the author signal first, the one
# that moves NDCG@10 most on the Goodreads sample.
STEPS: tuple[tuple[str, tuple[float, ...]], ...] = (
    ("author", (0.0, 0.5, 1.0, 1.5, 2.5)),
    ("next", (0.0, 0.5)),
    ("held", (0.0, 0.5)),
)


def _with(weights: SignalWeights, name: str, value: float) -> SignalWeights:
    values = dataclasses.asdict(weights) | {name: value}
    return SignalWeights(**values)


def best_signals(
    best: Trial,
    split: Split,
    floor: tuple[float, float],
    deadline: float,
    should_stop: Callable[[], bool] = lambda: False,
) -> Trial:
    """`best` with the signal weights that rank the split's held-out books best (by `above_floor`); `best` itself
    when its catalogue has no signals."""
    if best.model.signals.empty:
        return best
    measured: dict[SignalWeights, Trial] = {best.params.signals: best}

    def trial(weights: SignalWeights) -> Trial:
        if weights not in measured:
            if should_stop():
                raise TrainingCancelled("training cancelled")
            model = best.model.with_signals(weights)
            measured[weights] = Trial(model.meta.params, model, measure(model, split), best.seconds, cost=best.cost)
        return measured[weights]

    current = best.params.signals
    for name, values in STEPS:
        for value in values:
            if time.perf_counter() > deadline:
                log.info("tuning: the book-signal search ran out of time")
                return max(measured.values(), key=lambda t: above_floor(t.metrics, floor))
            trial(_with(current, name, value))
        current = max(
            (w for w in measured if all(getattr(w, n) == getattr(current, n) for n, _ in STEPS if n != name)),
            key=lambda w: above_floor(measured[w].metrics, floor),
        )
    return max(measured.values(), key=lambda t: above_floor(t.metrics, floor))
