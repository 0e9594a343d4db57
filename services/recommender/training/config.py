"""From the settings to what training uses: the one place where RECOMMENDER_* variables become parameters."""

from __future__ import annotations

from recommender.model.cf import cuda_available
from recommender.model.params import (
    ALSParams,
    GatePolicy,
    IndexParams,
    SignalWeights,
    SplitParams,
    TrainingParams,
    TuningPolicy,
)
from recommender.settings import Settings
from recommender.training.trainer import Trainer

_TRAINING = TrainingParams()


def training_params(settings: Settings) -> TrainingParams:
    return TrainingParams(
        als=ALSParams(
            factors=settings.als_factors,
            iterations=settings.als_iterations,
            regularization=settings.als_regularization,
            confidence=settings.als_confidence,
            rating_scale=settings.als_rating_scale,
            threads=settings.train_threads,
            device=train_device(settings),
        ),
        tfidf_max_features=settings.tfidf_max_features,
        alpha=settings.start_alpha,
        popularity_prior=settings.popularity_prior,
        cf_prior=settings.cf_prior,
        signals=_TRAINING.signals if settings.book_signals == "auto" else SignalWeights(),
        index=IndexParams(min_books=settings.index_min_books, threads=settings.train_threads),
    )


def train_device(settings: Settings) -> str:
    """ "gpu" or "cpu" for RECOMMENDER_TRAIN_DEVICE; "gpu" without CUDA is refused at start-up (see the CLI)."""
    if settings.train_device == "cpu":
        return "cpu"
    return "gpu" if cuda_available() else "cpu"


def tuning_policy(settings: Settings) -> TuningPolicy:
    return TuningPolicy(
        enabled=settings.tuning == "auto",
        trials=settings.tuning_trials,
        retrain_trials=settings.retrain_trials,
        seconds=settings.tuning_seconds or None,
        blend=settings.tunes_blend,
        halving=settings.tuning_halving,
        cost_budget=settings.cost_budget or None,
        book_signals=settings.book_signals == "auto",
    )


def split_params(settings: Settings) -> SplitParams:
    return SplitParams(
        holdout=settings.eval_holdout,
        min_positives=settings.eval_min_positives,
        seed=settings.eval_seed,
        by_time=settings.eval_split == "time",
        max_users=settings.eval_max_users,
    )


def make_trainer(settings: Settings, dsn: str) -> Trainer:
    return Trainer(
        dsn,
        settings.artifacts_dir,
        training_params(settings),
        settings.keep_versions,
        tuning=tuning_policy(settings),
        gate=GatePolicy(tolerance=settings.gate_tolerance),
        split=split_params(settings),
        shared_artifacts=settings.artifact_store == "postgres",
        canary_share=settings.canary_share if settings.canary == "auto" else None,
    )
