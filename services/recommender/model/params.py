"""The knobs that shape a model and how a release is measured: the one home of their defaults.

The settings (environment variables) start from these values, and so do the library's callers (benchmarks, tests):
change a default here and every path follows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


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
class TrainingParams:
    als: ALSParams = field(default_factory=ALSParams)
    tfidf_max_features: int = 10_000
    alpha: float = 0.6  # the CF weight of the blend: alpha * cf + (1 - alpha) * content
    popularity_prior: float = 10.0  # liked books a user needs before their own scores outweigh popularity

    def as_dict(self) -> dict[str, Any]:
        """The knobs that shape the model, flat (what the registry and the artifact store)."""
        als = {k: v for k, v in dataclasses.asdict(self.als).items() if k not in _SPEED_ONLY}
        return {
            **als,
            "tfidf_max_features": self.tfidf_max_features,
            "alpha": self.alpha,
            "popularity_prior": self.popularity_prior,
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
            if k in ("tfidf_max_features", "alpha", "popularity_prior")
        }
        return dataclasses.replace(self, als=als, **top)


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


@dataclass(frozen=True)
class QualityPolicy:
    """How a retrain measures and gates its candidate."""

    tuning: bool = True
    tuning_seconds: float = 5.0
    tune_alpha: bool = False
    gate_tolerance: float = 0.01
    split: SplitParams = field(default_factory=SplitParams)
