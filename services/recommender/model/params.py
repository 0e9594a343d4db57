"""The knobs that shape a model and how a release is measured: the one home of their defaults.

The settings (environment variables) start from these values, and so do the library's callers (benchmarks, tests):
change a default here and every path follows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SignalWeights:
    """How much each of a reader's book signals (model/signals.py) adds to a candidate's blended score, a sum of
    z-scores: the same units for every catalogue. All zero: the blend alone."""

    author: float = 0.0
    next: float = 0.0
    held: float = 0.0
    series_order: bool = False  # the unread volumes of a series the reader started in order, whatever the weights
    # Readers of this many books or more are ranked by the version's trees (model/learned.py) in place of the
    # weights; None: the version has no learned stage. Recorded so that the gate refits what is served.
    learned_from: int | None = None

    @property
    def off(self) -> bool:
        return not (self.author or self.next or self.held or self.series_order)

    def as_dict(self) -> dict[str, Any]:
        return {"author_weight": self.author, "next_weight": self.next, "held_weight": self.held,
                "series_order": self.series_order, "learned_from": self.learned_from}  # fmt: skip

    @classmethod
    def of(cls, values: dict[str, Any]) -> SignalWeights:
        """As `as_dict` wrote them; a version stored before book signals has none (the blend alone)."""
        weights = {k: float(values.get(f"{k}_weight", 0.0)) for k in ("author", "next", "held")}
        learned = values.get("learned_from")
        return cls(
            **weights,
            series_order=bool(values.get("series_order", False)),
            learned_from=None if learned is None else int(learned),
        )


@dataclass(frozen=True)
class ALSParams:
    factors: int = 64
    iterations: int = 15
    regularization: float = 0.05
    confidence: float = 1.0  # implicit's alpha: how much a weight adds to the confidence
    rating_scale: float = 1.0  # how much each star above the dislike threshold adds to the weight
    random_state: int = 42
    # How fast, not what: never stored with a version, never tuned.
    threads: int = 1
    device: str = "cpu"  # "gpu": implicit's CUDA ALS


_SPEED_ONLY = frozenset({"threads", "device"})


@dataclass(frozen=True)
class IndexParams:
    """When a version gets an index, and how its searches trade time for recall (how fast, not what: never
    stored with a version)."""

    min_books: int = 50_000  # below this many books the exhaustive product is as fast (README, "Scale")
    probed_share: float = 0.01  # of an inverted-file index's cells read by a search ...
    fewest_probes: int = 16  # ... and at least this many
    fewest_fetched: int = 64  # candidates each part contributes at first
    most_fetched: int = 4096  # ... and at most, while the threshold says more may be better
    exact_below: int = 20_000  # a predicate that allows fewer books than this is answered exhaustively
    threads: int = 1  # for building


@dataclass(frozen=True)
class TrainingParams:
    als: ALSParams = field(default_factory=ALSParams)
    tfidf_max_features: int = 10_000
    # The blend (see model/hybrid.py's Blend), a search's starting point: measured on the Goodreads sample and
    # MovieLens (both slices), readers with three books want a little popularity and more content than CF.
    alpha: float = 0.6  # the CF weight of the blend: alpha * cf + (1 - alpha) * content
    popularity_prior: float = 2.0  # liked books a user needs before their own scores outweigh popularity
    cf_prior: float = 3.0  # liked books a user needs before CF weighs as much as alpha says (content fills in)
    # A reader's book signals (model/signals.py), a search's starting point: the author signal measured on the
    # Goodreads sample (bench/book_signals.py); catalogues without authors or series ignore it.
    signals: SignalWeights = field(default_factory=lambda: SignalWeights(author=1.0, series_order=True))
    index: IndexParams = field(default_factory=IndexParams)  # how fast, not what: never stored with a version

    def as_dict(self) -> dict[str, Any]:
        """The knobs that shape the model, flat (what the registry and the artifact store)."""
        als = {k: v for k, v in dataclasses.asdict(self.als).items() if k not in _SPEED_ONLY}
        return {
            **als,
            "tfidf_max_features": self.tfidf_max_features,
            "alpha": self.alpha,
            "popularity_prior": self.popularity_prior,
            "cf_prior": self.cf_prior,
            **self.signals.as_dict(),
        }

    def with_values(self, values: dict[str, Any]) -> TrainingParams:
        """These params with the known keys of `values` (as `as_dict` writes them) replaced; unknown keys are
        ignored, so that versions stored by another release still load."""
        als_fields = {f.name for f in dataclasses.fields(ALSParams)} - _SPEED_ONLY
        als = dataclasses.replace(
            self.als, **{k: _like(getattr(self.als, k), v) for k, v in values.items() if k in als_fields}
        )
        top = {
            k: _like(getattr(self, k), v)
            for k, v in values.items()
            if k in ("tfidf_max_features", "alpha", "popularity_prior", "cf_prior")
        }
        return dataclasses.replace(self, als=als, signals=SignalWeights.of(values), **top)


def _like(default: Any, value: Any) -> Any:
    """`value` as the type of `default` (JSON gives 64.0 for 64, a registry row gives floats for ints)."""
    return type(default)(value)


@dataclass(frozen=True)
class SplitParams:
    """The evaluation split (see model/evaluation.py)."""

    holdout: float = 0.2
    min_positives: int = 5
    seed: int = 42
    by_time: bool = False
    like_threshold: float = 4.0
    max_users: int = 5000  # evaluate a random sample of the eligible users beyond this (metrics settle long before)
    # The cold slice: this share of the evaluated users keeps only `cold_history` training interactions, chosen at
    # random with the seed (the readers a hybrid exists for).
    cold_share: float = 0.25
    cold_history: int = 3


@dataclass(frozen=True)
class TuningPolicy:
    """What a retrain's search for a better configuration may spend (training/tuning.py)."""

    enabled: bool = True
    trials: int = 20  # full fits' worth a first version's search (and `recommender tune`) spends
    retrain_trials: int = 2  # full fits' worth a later retrain's search spends, the best known configurations first
    # A cap on any search's time, whatever its trials (None: none, the trials bound it). A cap that binds decides
    # by the machine's speed what is released; by default none does.
    seconds: float | None = None
    blend: bool = True  # alpha and the popularity and CF priors are searched too
    halving: bool = True  # each fit judged early on a sample, only the promising ones finished
    # Millions of multiply-adds a request's model maths (the ranking and `because` of ten books, model/cost.py) may
    # take with the chosen configuration; None: any (docs/model.md, "How the search chooses").
    cost_budget: float | None = None
    book_signals: bool = True  # the weights of a reader's book signals (model/signals.py) are searched too


@dataclass(frozen=True)
class GatePolicy:
    """When a candidate may replace the active version (training/trainer.py's `worse`)."""

    tolerance: float = 0.01  # NDCG@10 it may lose, on either slice
    cold_users: int = 20  # the cold slice counts only with this many readers (fewer say little)
