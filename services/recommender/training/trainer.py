"""One retrain as a measured release, in three steps: evaluate (and tune) on a held-out split; gate against the
active version on the same split; publish: fit on all data, write the artifact, verify it loads, record it in the
registry as a compare-and-set on the version the gate compared against (which sends the notice).

Training ends there: "artifact written and verified, registry record added, notice sent". Serving processes learn
of the new version from the registry and load it themselves (serving/versions.py), whoever trained it: a service's
child process, `recommender train`, another replica.
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
from typing import Protocol

import numpy as np

from recommender.model.catalogue import Catalogue
from recommender.model.content import ContentModel
from recommender.model.dataset import TrainingData
from recommender.model.evaluation import Report, Split, split
from recommender.model.fit import TrainingCancelled, fit_content, new_version, train
from recommender.model.params import GatePolicy, SignalWeights, SplitParams, TrainingParams, TuningPolicy
from recommender.storage.artifacts import ArtifactStore, open_store, prune
from recommender.storage.db import Database
from recommender.storage.registry import ActiveChanged, Outcome, Registry, Status, TrialRecord, VersionRecord
from recommender.storage.snapshot import SnapshotStore
from recommender.training.progress import RetrainControl
from recommender.training.ranker import InnerTrees, with_learned_stage
from recommender.training.trials import Trial, fit_and_measure
from recommender.training.tuning import Search, tune

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
class Evaluation:
    """What a retrain measured on its split: the candidate to release, the active configuration refitted on the
    same training part with its learned stage (None for a first version), every trial of the search, and each
    part's metrics."""

    split: Split
    content: tuple[Catalogue, ContentModel]  # fitted once: the search's fits and the final one share it
    candidate: Trial
    active: Trial | None
    tried: list[Trial]
    parts: dict[str, dict[str, float]]

    @property
    def before(self) -> dict[str, float]:
        return self.active.metrics.as_dict() if self.active else {}

    @property
    def after(self) -> dict[str, float]:
        return self.candidate.metrics.as_dict()


@dataclass
class Release:
    """One retrain under way: where it writes, what it read, and since when."""

    registry: Registry
    store: ArtifactStore
    snapshot: Snapshot
    version: str
    control: RetrainControl
    started: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


@dataclass(frozen=True)
class Trainer:
    """Plain data, so that it travels to the child process that runs it (training/child.py)."""

    dsn: str
    artifacts_dir: Path
    params: TrainingParams  # the configured knobs: where tuning starts on the first version, or all of it if off
    keep_versions: int
    tuning: TuningPolicy = field(default_factory=TuningPolicy)
    gate: GatePolicy = field(default_factory=GatePolicy)
    split: SplitParams = field(default_factory=SplitParams)
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
        shares the loop. A failure removes what it wrote and records the version as failed."""
        async with await Database.connect(self.dsn, max_size=2) as db:
            registry = Registry(db)
            store = open_store(self.artifacts_dir, db if self.shared_artifacts else None)
            control.stage("loading")
            snapshot = Snapshot(await SnapshotStore(db).load_training_data(), await registry.active())
            await tidy(store, registry)
            release = Release(registry, store, snapshot, new_version(datetime.now(UTC)), control)
            data = snapshot.data
            log.info(
                "training version %s on %d books and %d interactions",
                release.version, len(data.books), data.num_interactions,
            )  # fmt: skip
            try:
                evaluation = await self._evaluate(release)
                refusal = "" if control.force else self._refusal(evaluation)
                if refusal:
                    return await self._reject(release, evaluation, refusal)
                return await self._publish(release, evaluation)
            except (TrainingCancelled, asyncio.CancelledError):
                raise  # the route tidies (training/route.py): a child killed half-way could not
            except Exception as exc:
                failed = VersionRecord(
                    release.version,
                    Status.FAILED,
                    Outcome.FAILED,
                    reason=f"{type(exc).__name__}: {exc}",
                    data_sizes=snapshot.sizes,
                    training_seconds=release.seconds,
                )
                await _quietly(registry.add(failed))  # the database may be what failed: the log still says why
                raise

    async def tidy(self) -> None:
        """`tidy` over this trainer's store, on a connection of its own (the route's clean-up after a failure)."""
        async with await Database.connect(self.dsn, max_size=1) as db:
            await tidy(open_store(self.artifacts_dir, db if self.shared_artifacts else None), Registry(db))

    async def _evaluate(self, release: Release) -> Evaluation:
        """Step 1: the candidate measured on a held-out split, tuned when tuning is on; the active configuration
        measured there too."""
        release.control.stage("content")
        the_split = split(release.snapshot.data, self.split)
        fitted_content = fit_content(release.snapshot.data.books, self.params)
        release.control.stage("evaluating")
        earlier = [self.params.with_values(values) for values in await release.registry.best_trials()]
        candidate, active, tried = self._candidate(
            the_split, fitted_content, release.snapshot.active, earlier, release.control.should_stop
        )
        await release.registry.add_trials(release.version, [_trial_record(trial) for trial in tried])
        parts = {name: m.as_dict() for name, m in candidate.measured_parts(the_split).items()}
        if active is not None:
            parts["active"] = active.metrics.as_dict()
        evaluation = Evaluation(the_split, fitted_content, candidate, active, tried, parts)
        log.info(
            "evaluated on %d users: NDCG@10 %.4f (cf %.4f, content %.4f, popularity %.4f, active %s)",
            the_split.num_users, evaluation.after["ndcg_at_10"], parts["cf"]["ndcg_at_10"],
            parts["content"]["ndcg_at_10"], parts["popularity"]["ndcg_at_10"],
            f"{evaluation.before['ndcg_at_10']:.4f}" if active else "none",
        )  # fmt: skip
        return evaluation

    def _refusal(self, evaluation: Evaluation) -> str:
        """Step 2, the gate: why the candidate may not replace the active version ("" when it may)."""
        if evaluation.active is None:
            return ""
        return worse(evaluation.candidate.metrics, evaluation.active.metrics, self.gate, self.split.cold_history)

    async def _reject(self, release: Release, evaluation: Evaluation, reason: str) -> RetrainResult:
        record = self._record(release, evaluation, Status.REJECTED, Outcome.REJECTED, reason)
        await release.registry.add(record)
        active = release.snapshot.active
        log.info("version %s rejected: %s; %s keeps serving", release.version, reason, active and active.version)
        return self._result(release, evaluation, Outcome.REJECTED, reason)

    async def _publish(self, release: Release, evaluation: Evaluation) -> RetrainResult:
        """Step 3: the chosen configuration fitted on all data, written, verified, and recorded in place of the
        version the gate compared against (or, when another became active meanwhile, rejected for that)."""
        release.control.stage("cf")
        final = train(
            release.snapshot.data, evaluation.candidate.params, release.control.should_stop, evaluation.content
        ).with_ranker(evaluation.candidate.model.ranker)
        release.control.stage("saving")
        meta = dataclasses.replace(
            final.meta,
            version=release.version,
            metrics=evaluation.after,
            training_seconds=release.seconds,  # the whole release so far, evaluation and tuning included
            snapshot=release.snapshot.data.snapshot,
        )
        await release.store.save(dataclasses.replace(final, meta=meta))
        await release.store.load(release.version)  # verified as every process will load it, before anyone is told
        status, outcome, reason = self._decision(release, evaluation)
        active = release.snapshot.active
        try:
            record = self._record(release, evaluation, status, outcome, reason)
            await release.registry.add(record, replaces=active.version if active else None)
        except ActiveChanged as exc:  # a rollback or promotion went first: it stands, this candidate does not
            return await self._reject(release, evaluation, _changed_meanwhile(exc))
        log.info("version %s is %s (trained in %.1f s): %s", release.version, status.value, release.seconds, reason)
        await self._prune(release)
        return self._result(release, evaluation, outcome, reason)

    def _decision(self, release: Release, evaluation: Evaluation) -> tuple[Status, Outcome, str]:
        after, before = evaluation.after, evaluation.before
        if not before:
            return Status.ACTIVE, Outcome.PROMOTED, "the first version"
        compared = f"NDCG@10 {after['ndcg_at_10']:.4f}, the active version's {before['ndcg_at_10']:.4f}"
        if release.control.force:
            return Status.ACTIVE, Outcome.PROMOTED, f"forced ({compared})"
        if self.canary_share is not None:
            share = f"; a canary for {self.canary_share:.1%} of the users until its online test decides"
            return Status.CANARY, Outcome.CANARY, compared + share
        return Status.ACTIVE, Outcome.PROMOTED, compared

    def _record(
        self, release: Release, evaluation: Evaluation, status: Status, outcome: Outcome, reason: str
    ) -> VersionRecord:
        return VersionRecord(
            release.version,
            status,
            outcome,
            reason=reason,
            params=evaluation.candidate.params.as_dict(),
            data_sizes=release.snapshot.sizes,
            metrics=evaluation.after,
            evaluation=evaluation.parts,
            training_seconds=release.seconds,
            canary_share=self.canary_share if status is Status.CANARY else None,
        )

    def _result(self, release: Release, evaluation: Evaluation, outcome: Outcome, reason: str) -> RetrainResult:
        return RetrainResult(
            outcome,
            release.version,
            reason,
            release.seconds,
            evaluation.before,
            evaluation.after,
            release.snapshot.sizes,
        )

    async def _prune(self, release: Release) -> None:
        try:
            records = await release.registry.versions()
            keep = {release.version} | {r.version for r in records if r.status is Status.CANARY}
            pruned = await prune(release.store, [r.version for r in records], keep, self.keep_versions)
            if pruned:
                log.info("pruned the files of versions %s (RECOMMENDER_KEEP_VERSIONS)", ", ".join(pruned))
        except Exception as exc:  # the version is recorded already: a failed clean-up is for the next retrain
            log.warning("could not prune old versions: %s", exc)

    async def search(self) -> tuple[Trial, list[Trial]]:
        """A search of its own (`recommender tune`): a first version's budget on a fresh snapshot, its trials
        recorded so that the next retrains start from the best of them; nothing is released."""
        async with await Database.connect(self.dsn, max_size=2) as db:
            registry = Registry(db)
            data, active = await SnapshotStore(db).load_training_data(), await registry.active()
            earlier = [self.params.with_values(values) for values in await registry.best_trials()]
            the_split = split(data, self.split)
            fitted_content = fit_content(data.books, self.params)
            start = self._params_of(active) if active else self.params
            best, tried = tune(the_split, start, fitted_content, self._search(first=True), earlier=earlier)
            await registry.add_trials(None, [_trial_record(trial) for trial in tried])
            return best, tried

    def _search(self, first: bool) -> Search:
        return Search.of(self.tuning, self.split.seed, first)

    def _candidate(
        self,
        the_split: Split,
        fitted_content: tuple[Catalogue, ContentModel],
        active: VersionRecord | None,
        earlier: list[TrainingParams],
        should_stop: Callable[[], bool],
    ) -> tuple[Trial, Trial | None, list[Trial]]:
        """The configuration to release, measured on the split; the active configuration measured there too
        (refitted on the split's training part, the active model itself has seen the held-out books, and with the
        learned stage it serves); and every trial of the search."""
        active_params = self._params_of(active) if active else None
        active_trial = served = None
        inner = InnerTrees(the_split, fitted_content, should_stop)
        if active is not None and active_params is not None:
            # Measured with its parts: with a short search it is often the one released.
            active_trial = fit_and_measure(the_split, active_params, fitted_content, should_stop, parts=True)
            learned_from = SignalWeights.of(active.params).learned_from
            served = with_learned_stage(active_trial, learned_from, inner)
        if not self.tuning.enabled:
            if active_trial is not None and active_trial.params == self.params:
                return active_trial, served, []
            chosen = fit_and_measure(the_split, self.params, fitted_content, should_stop, parts=True)
            return chosen, served, []
        search = self._search(first=active is None)
        best, tried = tune(
            the_split, active_params or self.params, fitted_content, search, should_stop, active_trial, earlier, inner
        )
        log.info("tuning chose %s after %d trials", best.params.as_dict(), len(tried))
        return best, served, tried

    def _params_of(self, active: VersionRecord) -> TrainingParams:
        """The active version's choice, with this process's settings for what is not searched."""
        params = self.params.with_values(active.params)
        if not self.tuning.blend:
            params = dataclasses.replace(
                params,
                alpha=self.params.alpha,
                popularity_prior=self.params.popularity_prior,
                cf_prior=self.params.cf_prior,
            )
        # Its learned stage is fitted apart (`with_learned_stage`): a fit of these params has no trees.
        signals = dataclasses.replace(params.signals, learned_from=None)
        return dataclasses.replace(params, signals=signals, tfidf_max_features=self.params.tfidf_max_features)


def worse(after: Report, before: Report, gate: GatePolicy, cold_history: int) -> str:
    """Why the gate refuses a candidate (empty: it does not): a loss of more than the tolerance on the warm slice,
    or on the cold slice when it has enough readers to say."""
    tolerance = gate.tolerance
    if after.ndcg < before.ndcg - tolerance:
        return f"NDCG@10 {after.ndcg:.4f} is below the active version's {before.ndcg:.4f} by more than {tolerance:g}"
    enough = min(after.cold.users, before.cold.users) >= gate.cold_users
    if enough and after.ndcg_cold < before.ndcg_cold - tolerance:
        return (
            f"NDCG@10 of readers with {cold_history} books {after.ndcg_cold:.4f} is below the active "
            f"version's {before.ndcg_cold:.4f} by more than {tolerance:g}"
        )
    return ""


class Versions(Protocol):
    """The registry as the clean-up reads it (storage/registry.py's Registry)."""

    async def versions(self) -> list[VersionRecord]: ...


async def tidy(store: ArtifactStore, registry: Versions) -> list[str]:
    """Removes what retrains that died or failed half-way left in the artifact store (`.incoming-*` folders,
    versions the registry never recorded or recorded as failed): the one clean-up, at every retrain's start, after
    a failure (training/route.py), and when a service starts. The caller holds the cluster's retrain lock, so no
    retrain is writing."""
    owned = {record.version for record in await registry.versions() if record.status is not Status.FAILED}
    removed = await store.clean(owned)
    if removed:
        log.info("removed model files no registered version owns (left by a stopped retrain): %s", removed)
    return removed


def _changed_meanwhile(exc: ActiveChanged) -> str:
    return (
        f"the active version changed from {exc.expected or 'none'} to {exc.current or 'none'} during the retrain, "
        "and the gate compared against the former: retrain to compare against the new one"
    )


def _trial_record(trial: Trial) -> TrialRecord:
    return TrialRecord(
        trial.params.as_dict(), trial.metrics.as_dict(), trial.score, trial.seconds, trial.fidelity, trial.elapsed,
        trial.cost,
    )  # fmt: skip


async def _quietly(step: Awaitable[object]) -> None:
    """A clean-up step after a failure: its own failure is logged, never raised over the first one."""
    try:
        await step
    except Exception as exc:
        log.warning("clean-up after a failed retrain: %s", str(exc) or type(exc).__name__)
