"""One retrain as a measured release: snapshot, evaluate (and tune) on a held-out split, gate against the active
version on the same split, fit on all data, write the artifact, record the version in the registry.

Training ends there: "artifact written, registry record added, notice sent". Serving processes learn of the new
version from the registry and load it themselves (serving/versions.py), whoever trained it: a service's child
process, `recommender train`, another replica.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from recommender.model.cf import cuda_available
from recommender.model.content import ContentModel
from recommender.model.dataset import TrainingData
from recommender.model.evaluation import Report, Split, split
from recommender.model.fit import TrainingCancelled, fit_content, new_version, train
from recommender.model.hybrid import Catalogue
from recommender.model.params import ALSParams, QualityPolicy, SplitParams, TrainingParams
from recommender.settings import Settings
from recommender.storage.artifacts import ArtifactStore, open_store, prune
from recommender.storage.db import Database
from recommender.storage.registry import ActiveChanged, Outcome, Registry, Status, TrialRecord, VersionRecord
from recommender.training.progress import RetrainControl
from recommender.training.quality import Search, Trial, fit_and_measure, tune

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainResult:
    outcome: Outcome
    version: str
    reason: str
    seconds: float
    metrics_before: dict[str, float] = field(default_factory=dict)  # the active version's, on the same split
    metrics_after: dict[str, float] = field(default_factory=dict)  # the candidate's
    data_sizes: dict[str, int] = field(default_factory=dict)  # users, books and interactions of the snapshot


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
    )


def train_device(settings: Settings) -> str:
    """ "gpu" or "cpu" for RECOMMENDER_TRAIN_DEVICE; "gpu" without CUDA is refused at start-up (see the CLI)."""
    if settings.train_device == "cpu":
        return "cpu"
    return "gpu" if cuda_available() else "cpu"


def quality_policy(settings: Settings) -> QualityPolicy:
    return QualityPolicy(
        tuning=settings.tuning == "auto",
        tuning_trials=settings.tuning_trials,
        retrain_trials=settings.retrain_trials,
        tuning_seconds=settings.tuning_seconds,
        tune_blend=settings.tunes_blend,
        gate_tolerance=settings.gate_tolerance,
        split=SplitParams(
            holdout=settings.eval_holdout,
            min_positives=settings.eval_min_positives,
            seed=settings.eval_seed,
            by_time=settings.eval_split == "time",
            max_users=settings.eval_max_users,
        ),
    )


def make_trainer(settings: Settings, dsn: str) -> Trainer:
    return Trainer(
        dsn,
        settings.artifacts_dir,
        training_params(settings),
        settings.keep_versions,
        quality_policy(settings),
        shared_artifacts=settings.artifact_store == "postgres",
        canary_share=settings.canary_share if settings.canary == "auto" else None,
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
    """Plain data, so that it travels to the child process that runs it (training/child.py)."""

    dsn: str
    artifacts_dir: Path
    params: TrainingParams  # the configured knobs: where tuning starts on the first version, or all of it if off
    keep_versions: int
    policy: QualityPolicy = field(default_factory=QualityPolicy)
    # Keep every version's files in the database too, for replicas on hosts that do not share the artifacts folder.
    shared_artifacts: bool = False
    # RECOMMENDER_CANARY=auto: a candidate that passes the gate serves this share of the users first (a canary),
    # unless it is the first version or the retrain is forced.
    canary_share: float | None = None

    def __call__(self, control: RetrainControl | None = None) -> RetrainResult:
        """The whole retrain on this thread, with an event loop of its own for the database steps."""
        return asyncio.run(self.run(control or RetrainControl()))

    async def run(self, control: RetrainControl) -> RetrainResult:
        """The caller holds the cluster's retrain lock. The CPU-heavy steps run on this loop's thread: nothing else
        shares the loop."""
        started = time.perf_counter()
        async with await Database.connect(self.dsn, max_size=2) as db:
            registry = Registry(db)
            store = open_store(self.artifacts_dir, db if self.shared_artifacts else None)
            control.stage("loading")
            snapshot = Snapshot(await db.load_training_data(), await registry.active())
            removed = await store.clean({record.version for record in await registry.versions()})
            if removed:
                log.info("removed model files no registered version owns (left by a stopped retrain): %s", removed)
            version = new_version(datetime.now(UTC))
            log.info(
                "training version %s on %d books and %d interactions",
                version,
                len(snapshot.data.books),
                snapshot.data.num_interactions,
            )
            try:
                return await self._release(snapshot, version, started, control, registry, store)
            except (TrainingCancelled, asyncio.CancelledError):
                await _quietly(store.remove([version]))
                raise
            except Exception as exc:
                await _quietly(store.remove([version]))
                failed = VersionRecord(
                    version,
                    Status.FAILED,
                    Outcome.FAILED,
                    reason=f"{type(exc).__name__}: {exc}",
                    data_sizes=snapshot.sizes,
                    training_seconds=time.perf_counter() - started,
                )
                await _quietly(registry.add(failed))  # the database may be what failed: the log still says why
                raise

    async def _release(
        self,
        snapshot: Snapshot,
        version: str,
        started: float,
        control: RetrainControl,
        registry: Registry,
        store: ArtifactStore,
    ) -> RetrainResult:
        data, active, should_stop = snapshot.data, snapshot.active, control.should_stop
        control.stage("content")
        the_split = split(data, self.policy.split)
        fitted_content = fit_content(data.books, self.params)
        control.stage("evaluating")
        earlier = [self.params.with_values(values) for values in await registry.best_trials()]
        candidate, active_trial, tried = self._candidate(the_split, fitted_content, active, earlier, should_stop)
        await registry.add_trials(version, [_trial_record(trial) for trial in tried])
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
            Outcome.PROMOTED,
            params=candidate.params.as_dict(),
            data_sizes=snapshot.sizes,
            metrics=after,
            evaluation=evaluation,
        )
        refusal = worse(candidate.metrics, active_trial.metrics, self.policy) if active_trial else ""
        if refusal and not control.force:
            reason = refusal
            seconds = time.perf_counter() - started
            rejected = dataclasses.replace(
                record, status=Status.REJECTED, outcome=Outcome.REJECTED, reason=reason, training_seconds=seconds
            )
            await registry.add(rejected)
            log.info("version %s rejected: %s; %s keeps serving", version, reason, active and active.version)
            return RetrainResult(Outcome.REJECTED, version, reason, seconds, before, after, snapshot.sizes)

        control.stage("cf")
        final = train(data, candidate.params, should_stop, fitted_content)
        control.stage("saving")
        # The version's training time is the whole release so far (evaluation and tuning included).
        meta = dataclasses.replace(
            final.meta,
            version=version,
            metrics=after,
            training_seconds=time.perf_counter() - started,
            snapshot=data.snapshot,
        )
        await store.save(dataclasses.replace(final, meta=meta))
        outcome = Outcome.PROMOTED
        if not before:
            reason = "the first version"
        elif control.force:
            reason = f"forced (NDCG@10 {after['ndcg_at_10']:.4f}, the active version's {before['ndcg_at_10']:.4f})"
        else:
            reason = f"NDCG@10 {after['ndcg_at_10']:.4f}, the active version's {before['ndcg_at_10']:.4f}"
            if self.canary_share is not None:
                outcome = Outcome.CANARY
                reason += f"; a canary for {self.canary_share:.1%} of the users until its online test decides"
                record = dataclasses.replace(record, status=Status.CANARY, canary_share=self.canary_share)
        seconds = time.perf_counter() - started
        released = dataclasses.replace(record, outcome=outcome, reason=reason, training_seconds=seconds)
        try:
            await registry.add(released, replaces=active.version if active else None)
        except ActiveChanged as exc:  # a rollback or promotion went first: it stands, this candidate does not
            reason = (
                f"the active version changed from {exc.expected or 'none'} to {exc.current or 'none'} during the "
                "retrain, and the gate compared against the former: retrain to compare against the new one"
            )
            await registry.add(
                dataclasses.replace(released, status=Status.REJECTED, outcome=Outcome.REJECTED, reason=reason)
            )
            log.info("version %s rejected: %s", version, reason)
            return RetrainResult(Outcome.REJECTED, version, reason, seconds, before, after, snapshot.sizes)
        log.info("version %s is %s (trained in %.1f s): %s", version, record.status.value, seconds, reason)
        try:
            records = await registry.versions()
            canaries = {r.version for r in records if r.status is Status.CANARY}
            pruned = await prune(store, [r.version for r in records], {version} | canaries, self.keep_versions)
            if pruned:
                log.info("pruned the files of versions %s (RECOMMENDER_KEEP_VERSIONS)", ", ".join(pruned))
        except Exception as exc:  # the version is active already: a failed clean-up is for the next retrain
            log.warning("could not prune old versions: %s", exc)
        return RetrainResult(outcome, version, reason, seconds, before, after, snapshot.sizes)

    async def search(self) -> tuple[Trial, list[Trial]]:
        """A search of its own (`recommender tune`): a first version's budget on a fresh snapshot, its trials
        recorded so that the next retrains start from the best of them; nothing is released."""
        async with await Database.connect(self.dsn, max_size=2) as db:
            registry = Registry(db)
            data, active = await db.load_training_data(), await registry.active()
            earlier = [self.params.with_values(values) for values in await registry.best_trials()]
            the_split = split(data, self.policy.split)
            fitted_content = fit_content(data.books, self.params)
            start = self._params_of(active) if active else self.params
            search = Search(
                self.policy.tuning_trials, self.policy.tuning_seconds, self.policy.split.seed, self.policy.tune_blend
            )
            best, tried = tune(the_split, start, fitted_content, search, earlier=earlier)
            await registry.add_trials(None, [_trial_record(trial) for trial in tried])
            return best, tried

    def _candidate(
        self,
        the_split: Split,
        fitted_content: tuple[Catalogue, ContentModel],
        active: VersionRecord | None,
        earlier: list[TrainingParams],
        should_stop: Callable[[], bool],
    ) -> tuple[Trial, Trial | None, list[Trial]]:
        """The configuration to release, measured on the split; the active configuration measured there too
        (refitted on the split's training part: the active model itself has seen the held-out books); and every
        trial of the search."""
        active_params = self._params_of(active) if active else None
        active_trial = None
        if active_params is not None:
            # Measured with its parts: with a short search it is often the one released.
            active_trial = fit_and_measure(the_split, active_params, fitted_content, should_stop, parts=True)
        if not self.policy.tuning:
            if active_trial is not None and active_trial.params == self.params:
                return active_trial, active_trial, []
            chosen = fit_and_measure(the_split, self.params, fitted_content, should_stop, parts=True)
            return chosen, active_trial, []
        search = Search(
            self.policy.retrain_trials if active else self.policy.tuning_trials,
            self.policy.tuning_seconds,
            self.policy.split.seed,
            self.policy.tune_blend,
        )
        best, tried = tune(
            the_split, active_params or self.params, fitted_content, search, should_stop, active_trial, earlier
        )
        log.info("tuning chose %s after %d trials", best.params.as_dict(), len(tried))
        return best, active_trial, tried

    def _params_of(self, active: VersionRecord) -> TrainingParams:
        """The active version's choice, with this process's settings for what is not searched."""
        params = self.params.with_values(active.params)
        if not self.policy.tune_blend:
            params = dataclasses.replace(
                params,
                alpha=self.params.alpha,
                popularity_prior=self.params.popularity_prior,
                cf_prior=self.params.cf_prior,
            )
        return dataclasses.replace(params, tfidf_max_features=self.params.tfidf_max_features)


def worse(after: Report, before: Report, policy: QualityPolicy) -> str:
    """Why the gate refuses a candidate (empty: it does not): a loss of more than the tolerance on the warm slice,
    or on the cold slice when it has enough readers to say."""
    tolerance = policy.gate_tolerance
    if after.ndcg < before.ndcg - tolerance:
        return f"NDCG@10 {after.ndcg:.4f} is below the active version's {before.ndcg:.4f} by more than {tolerance:g}"
    enough = min(after.cold.users, before.cold.users) >= policy.gate_cold_users
    if enough and after.ndcg_cold < before.ndcg_cold - tolerance:
        return (
            f"NDCG@10 of readers with {policy.split.cold_history} books {after.ndcg_cold:.4f} is below the active "
            f"version's {before.ndcg_cold:.4f} by more than {tolerance:g}"
        )
    return ""


def _trial_record(trial: Trial) -> TrialRecord:
    return TrialRecord(trial.params.as_dict(), trial.metrics.as_dict(), trial.score, trial.seconds)


async def _quietly(step: Awaitable[object]) -> None:
    """A clean-up step after a failure: its own failure is logged, never raised over the first one."""
    try:
        await step
    except Exception as exc:
        log.warning("clean-up after a failed retrain: %s", str(exc) or type(exc).__name__)
