"""A configuration measured on a held-out split: its fit, its NDCG@10 on the warm and the cold slice (readers cut
to three books), its parts, and a request's cost with it. What a search maximises is `score`: the logarithms of
NDCG@10 on both slices, added, so that a configuration wins by serving both, each by its relative gain."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from recommender.model.catalogue import Catalogue
from recommender.model.content import ContentModel
from recommender.model.evaluation import IntArray, K, Ranker, Report, Split, evaluate
from recommender.model.fit import train
from recommender.model.hybrid import HybridModel
from recommender.model.params import TrainingParams
from recommender.model.ranking import Mode
from recommender.model.recommend import top_books

log = logging.getLogger(__name__)


PART_NAMES = {Mode.HYBRID: "hybrid", Mode.CF: "cf", Mode.CONTENT: "content", Mode.POPULAR: "popularity"}


def measure_modes(model: HybridModel, split: Split, modes: tuple[Mode, ...]) -> dict[Mode, Report]:
    """The metrics of `model` (fitted on `split.train`) ranking by each mode, on the split's held-out books."""
    users = list(split.held_out)
    return {
        mode: evaluate(_lookup(dict(zip(users, lists, strict=True))), split, model.num_books)
        for mode, lists in top_books(model, users, K, modes).items()
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
    cost: float | None = None  # a request's model maths with it, millions of multiply-adds (training/costs.py)

    @property
    def score(self) -> float:
        return score(self.metrics)

    @property
    def full(self) -> bool:
        return self.fidelity >= 1.0

    def measured_parts(self, split: Split) -> dict[str, Report]:
        return self.parts if self.parts is not None else measure_parts(self.model, split)

    def describe(self) -> str:
        cost = "" if self.cost is None else f", {self.cost:.1f} M multiply-adds a request"
        how = "in full" if self.full else f"judged early at fidelity {self.fidelity:.2f}"
        return (
            f"{knobs_text(self.params)}: NDCG@10 {self.metrics.ndcg:.4f}, cold {self.metrics.ndcg_cold:.4f}, "
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


def knobs_text(params: TrainingParams) -> str:
    als = params.als
    return (
        f"{als.factors} factors, regularisation {als.regularization:.3g}, {als.iterations} iterations, "
        f"confidence {als.confidence:.3g}, rating scale {als.rating_scale:.2f}"
    )
