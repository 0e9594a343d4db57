"""One retrain as a measured release: snapshot, evaluate (and tune) on a held-out split, gate against the active
version on the same split, then fit on all data, write the artifact and record the version in the registry."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

import numpy as np

from recommender.model.cf import ALSParams, cuda_available
from recommender.model.content import ContentModel
from recommender.model.dataset import TrainingData
from recommender.model.evaluation import Split, SplitParams, split
from recommender.model.hybrid import Catalogue, HybridModel
from recommender.model.training import TrainingCancelled, TrainingParams, fit_content, new_version, train
from recommender.settings import Settings
from recommender.storage.artifacts import ArtifactStore
from recommender.storage.db import Database
from recommender.storage.registry import Registry, Status, VersionRecord
from recommender.training.progress import RetrainControl
from recommender.training.quality import Trial, fit_and_measure, tune

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    PROMOTED = "promoted"
    REJECTED = "rejected"
    FAILED = "failed"


@dataclass(frozen=True)
class RetrainResult:
    outcome: Outcome
    version: str
    reason: str
    seconds: float
    metrics_before: dict[str, float] = field(default_factory=dict)  # the active version's, on the same split
    metrics_after: dict[str, float] = field(default_factory=dict)  # the candidate's
    model: HybridModel | None = None  # the promoted model, as loaded back from its artifact


@dataclass(frozen=True)
class Candidate:
    """What the heavy part of a retrain decided. A promoted one (with the registry record to write when it is
    published) has its artifact written but is not active yet; a rejected one is recorded already."""

    result: RetrainResult
    record: VersionRecord | None


@dataclass(frozen=True)
class QualityPolicy:
    tuning: bool = True
    tuning_seconds: float = 10.0
    tune_alpha: bool = False
    gate_tolerance: float = 0.01
    split: SplitParams = field(default_factory=SplitParams)


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
    )


def train_device(settings: Settings) -> str:
    """ "gpu" or "cpu" for RECOMMENDER_TRAIN_DEVICE; "gpu" without CUDA is refused at start-up (see the CLI)."""
    if settings.train_device == "cpu":
        return "cpu"
    return "gpu" if cuda_available() else "cpu"


def quality_policy(settings: Settings) -> QualityPolicy:
    return QualityPolicy(
        tuning=settings.tuning == "auto",
        tuning_seconds=settings.tuning_seconds,
        tune_alpha=settings.alpha == "auto",
        gate_tolerance=settings.gate_tolerance,
        split=SplitParams(
            holdout=settings.eval_holdout,
            min_positives=settings.eval_min_positives,
            seed=settings.eval_seed,
            by_time=settings.eval_split == "time",
            max_users=settings.eval_max_users,
        ),
    )


@dataclass(frozen=True)
class Snapshot:
    data: TrainingData
    active: VersionRecord | None

    @property
    def sizes(self) -> dict[str, int]:
        return {
            "users": int(np.unique(self.data.user_ids).size),
            "books": len(self.data.books),
            "interactions": self.data.num_interactions,
        }


@dataclass(frozen=True)
class Trainer:
    dsn: str
    store: ArtifactStore
    params: TrainingParams  # the configured knobs: where tuning starts on the first version, or all of it if off
    keep_versions: int
    policy: QualityPolicy = field(default_factory=QualityPolicy)
    # Keep every version's files in the database too, for replicas on hosts that do not share the artifacts folder.
    shared_artifacts: bool = False

    def __call__(self, control: RetrainControl | None = None) -> RetrainResult:
        """The whole retrain in this process (a worker thread, or the CLI)."""
        return self.publish(self.prepare(control or RetrainControl()))

    def prepare(self, control: RetrainControl) -> Candidate:
        """The heavy part: snapshot, evaluate, gate, fit and write the artifact. Each database step runs on its own
        short event loop and connection, so it can run in a worker thread or a child process."""
        started = time.perf_counter()
        control.stage("loading")
        snapshot = asyncio.run(self._snapshot())
        data = snapshot.data
        log.info("training on %d books and %d interactions", len(data.books), data.num_interactions)
        version = new_version(datetime.now(UTC))
        try:
            return self._release(snapshot, version, started, control)
        except TrainingCancelled:
            raise
        except Exception as exc:
            self._record_failure(VersionRecord(version, Status.FAILED, data_sizes=snapshot.sizes), exc)
            raise

    def publish(self, candidate: Candidate) -> RetrainResult:
        """Makes a promoted candidate the active version: loads its artifact back (what runs is what a restart or
        another replica would load), records it, and returns it with the model to serve."""
        result = candidate.result
        if candidate.record is None:
            return result
        try:
            model = self.store.load(result.version)
            asyncio.run(self._record(candidate.record))
        except Exception as exc:
            self._record_failure(candidate.record, exc)
            raise
        self.store.set_current(result.version)
        self.store.prune(self.keep_versions)
        if self.shared_artifacts:
            asyncio.run(self._prune_shared())
        log.info(
            "version %s is active: %d users, %d items, %d interactions, %d features; %s",
            result.version, model.cf.num_users, model.cf.num_items, model.cf.nnz, model.content.feature_dim,
            result.reason,
        )  # fmt: skip
        return dataclasses.replace(result, model=model)

    def _record_failure(self, record: VersionRecord, exc: Exception) -> None:
        failed = dataclasses.replace(record, status=Status.FAILED, reason=f"{type(exc).__name__}: {exc}")
        try:
            asyncio.run(self._record(failed))
        except Exception:  # the database may be what failed: the log and the caller still say why
            log.warning("could not record failed version %s in the registry", record.version, exc_info=True)

    def _release(self, snapshot: Snapshot, version: str, started: float, control: RetrainControl) -> Candidate:
        data, active, should_stop = snapshot.data, snapshot.active, control.should_stop
        control.stage("content")
        the_split = split(data, self.policy.split)
        fitted_content = fit_content(data.books, self.params)
        control.stage("evaluating")
        active_params = self._params_of(active) if active else None
        candidate, active_trial = self._candidate(the_split, fitted_content, active_params, should_stop)
        evaluation = {name: m.as_dict() for name, m in candidate.measured_parts(the_split).items()}
        before: dict[str, float] = {}
        if active_trial is not None:
            before = evaluation["active"] = active_trial.metrics.as_dict()
        after = candidate.metrics.as_dict()
        log.info(
            "evaluated on %d users: NDCG@10 %.4f (cf %.4f, content %.4f, popularity %.4f, active %s)",
            the_split.num_users, after["ndcg_at_10"], evaluation["cf"]["ndcg_at_10"],
            evaluation["content"]["ndcg_at_10"], evaluation["popularity"]["ndcg_at_10"],
            f"{before['ndcg_at_10']:.4f}" if before else "none",
        )  # fmt: skip
        record = VersionRecord(
            version,
            Status.ACTIVE,
            params=candidate.params.as_dict(),
            data_sizes=snapshot.sizes,
            metrics=after,
            evaluation=evaluation,
        )
        tolerance = self.policy.gate_tolerance
        force = control.force
        if before and not force and after["ndcg_at_10"] < before["ndcg_at_10"] - tolerance:
            reason = (
                f"NDCG@10 {after['ndcg_at_10']:.4f} is below the active version's {before['ndcg_at_10']:.4f} "
                f"by more than {tolerance:g}"
            )
            seconds = time.perf_counter() - started
            asyncio.run(self._record(dataclasses.replace(record, status=Status.REJECTED, reason=reason)))
            log.info("version %s rejected: %s; %s keeps serving", version, reason, active and active.version)
            return Candidate(RetrainResult(Outcome.REJECTED, version, reason, seconds, before, after), None)

        control.stage("cf")
        final = train(data, candidate.params, should_stop, fitted_content)
        # The version's training time is the whole release so far (evaluation and tuning included).
        meta = dataclasses.replace(
            final.meta, version=version, metrics=after, training_seconds=time.perf_counter() - started
        )
        control.stage("saving")
        self.store.save(dataclasses.replace(final, meta=meta))
        if self.shared_artifacts:
            asyncio.run(self._upload(version))
        if not before:
            reason = "the first version"
        elif force:
            reason = f"forced (NDCG@10 {after['ndcg_at_10']:.4f}, the active version's {before['ndcg_at_10']:.4f})"
        else:
            reason = f"NDCG@10 {after['ndcg_at_10']:.4f}, the active version's {before['ndcg_at_10']:.4f}"
        seconds = time.perf_counter() - started
        log.info("trained version %s in %.1f s", version, seconds)
        return Candidate(
            RetrainResult(Outcome.PROMOTED, version, reason, seconds, before, after),
            dataclasses.replace(record, reason=reason, training_seconds=seconds),
        )

    def _candidate(
        self,
        the_split: Split,
        fitted_content: tuple[Catalogue, ContentModel],
        active_params: TrainingParams | None,
        should_stop: Callable[[], bool],
    ) -> tuple[Trial, Trial | None]:
        """The configuration to release, measured on the split, and the active configuration measured there too
        (refitted on the split's training part: the active model itself has seen the held-out books)."""
        active_trial = None
        if active_params is not None:
            # Measured with its parts: with a short tuning budget it is often the one released.
            active_trial = fit_and_measure(the_split, active_params, fitted_content, should_stop, parts=True)
        if not self.policy.tuning:
            if active_trial is not None and active_trial.params == self.params:
                return active_trial, active_trial
            return fit_and_measure(the_split, self.params, fitted_content, should_stop, parts=True), active_trial
        best, fits = tune(
            the_split,
            active_params or self.params,
            fitted_content,
            self.policy.tuning_seconds,
            self.policy.tune_alpha,
            should_stop,
            first=active_trial,
        )
        log.info("tuning chose %s after %d fits", best.params.as_dict(), fits)
        return best, active_trial

    def _params_of(self, active: VersionRecord) -> TrainingParams:
        """The active version's choice, with this process's settings for what is not tuned."""
        params = self.params.with_values(active.params)
        if not self.policy.tune_alpha:
            params = dataclasses.replace(params, alpha=self.params.alpha)
        return dataclasses.replace(
            params, tfidf_max_features=self.params.tfidf_max_features, popularity_prior=self.params.popularity_prior
        )

    async def _snapshot(self) -> Snapshot:
        async with await Database.connect(self.dsn, max_size=1) as db:
            return Snapshot(await db.load_training_data(), await Registry(db).active())

    async def _upload(self, version: str) -> None:
        async with await Database.connect(self.dsn, max_size=1) as db:
            await db.save_artifact_files(version, self.store.files(version))

    async def _prune_shared(self) -> None:
        async with await Database.connect(self.dsn, max_size=1) as db:
            await db.delete_artifact_files(keep=self.store.complete_versions())

    async def _record(self, record: VersionRecord) -> None:
        async with await Database.connect(self.dsn, max_size=1) as db:
            await Registry(db).add(record)
