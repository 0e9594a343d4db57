"""The canary's judge, in the processes that may train: every few seconds it compares the canary's online metrics
with the active version's over the same period (since the canary started, the same attribution), and with
RECOMMENDER_CANARY=auto it promotes or aborts the canary once the sequential test (answers/statistics.py) is decisive.
Each decision goes to the registry (the version's reason, with the test's numbers) and the log. Several
processes may judge at once: the registry lets only the first decision through.

It also keeps the online metrics of the served versions current for Prometheus (every minute, or less often when
reading them takes long).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from recommender.answers.statistics import Decision, SequentialTest, Verdict
from recommender.storage.db import DATABASE_ERRORS
from recommender.storage.registry import ActiveChanged, NoCanary
from recommender.storage.sums import OnlineSums
from recommender.tasks import cancelled

log = logging.getLogger(__name__)

METRICS_PERIOD = timedelta(hours=24)  # what the Prometheus gauges cover
METRICS_SECONDS = 60.0  # how often, at most
STOP_SECONDS = 2.0


@dataclass(frozen=True)
class CanaryPolicy:
    share: float = 0.1  # of the users, for a canary started without one
    automatic: bool = False  # promote or abort by the test (RECOMMENDER_CANARY=auto)
    test: SequentialTest = field(default_factory=SequentialTest)
    check_seconds: float = 10.0


@dataclass(frozen=True)
class Comparison:
    """A canary against the active version, over the same period."""

    canary: OnlineSums
    active: OnlineSums
    verdict: Verdict
    active_version: str  # what the canary was compared with


# Each version's online sums since a moment, of some versions: OnlineStore.sums, or OnlineView.sums (cached).
SumsSource = Callable[[datetime | None, Sequence[str]], Awaitable[dict[str, OnlineSums]]]


class Canary(Protocol):
    @property
    def version(self) -> str: ...

    @property
    def started_at(self) -> datetime: ...


class Served(Protocol):
    """What the judge needs of its process's serving side (serving/versions.py's VersionManager): what serves, and
    the canary's fate carried out everywhere."""

    @property
    def version(self) -> str | None: ...

    @property
    def canary(self) -> Canary | None: ...

    async def promote_canary(self, reason: str, version: str | None = None, against: str | None = None) -> str: ...

    async def abort_canary(self, reason: str, version: str | None = None) -> str: ...


class Summing(Protocol):
    """Where the judge reads the versions' online sums (storage/feedback.py's OnlineStore)."""

    async def sums(
        self, since: datetime | None = None, versions: Sequence[str] | None = None
    ) -> dict[str, OnlineSums]: ...


async def compare(sums_of: SumsSource, versions: Served, test: SequentialTest) -> Comparison | None:
    """The running canary against the active version since the canary started; None when no canary runs."""
    canary, active = versions.canary, versions.version
    if canary is None or active is None:
        return None
    sums = await sums_of(canary.started_at, [canary.version, active])
    ours, theirs = sums.get(canary.version, OnlineSums()), sums.get(active, OnlineSums())
    return Comparison(ours, theirs, test.decide(ours, theirs), active)


class CanaryJudge:
    def __init__(
        self,
        versions: Served,
        store: Summing,
        policy: CanaryPolicy,
        on_sums: Callable[[dict[str, OnlineSums]], None] = lambda sums: None,
    ) -> None:
        """`on_sums(sums)`: the served versions' online sums over METRICS_PERIOD, every METRICS_SECONDS or less often
        (metrics)."""
        self._versions = versions
        self._store = store
        self._policy = policy
        self._on_sums = on_sums
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stopping = True
        await cancelled(self._task, STOP_SECONDS)

    async def look(self) -> Comparison | None:
        """One look: the comparison, and the decision when the test is decisive (RECOMMENDER_CANARY=auto)."""
        comparison = await compare(self._store.sums, self._versions, self._policy.test)
        canary = self._versions.canary
        if comparison is None or canary is None:
            return comparison
        verdict = comparison.verdict
        if verdict.decision is Decision.WAIT or not self._policy.automatic:
            return comparison
        try:
            if verdict.decision is Decision.PROMOTE:
                reason = f"promoted by its online test: {verdict.reason}"
                await self._versions.promote_canary(reason, canary.version, comparison.active_version)
            else:
                reason = f"aborted by its online test: {verdict.reason}"
                await self._versions.abort_canary(reason, canary.version)
        except (NoCanary, ActiveChanged):
            return comparison  # another process decided first: the next look compares again
        log.info("canary %s %s", canary.version, reason)
        return comparison

    async def _run(self) -> None:
        metrics_due = 0.0
        while not self._stopping:
            await asyncio.sleep(self._policy.check_seconds)
            try:
                await self.look()
                if time.monotonic() >= metrics_due:  # a day's impressions: at most a tenth of the time on them
                    started = time.monotonic()
                    self._on_sums(await self._served_sums())
                    metrics_due = time.monotonic() + max(METRICS_SECONDS, 10 * (time.monotonic() - started))
            except DATABASE_ERRORS as exc:
                log.warning("cannot read the online metrics yet: %s", str(exc) or type(exc).__name__)
            except Exception:  # the canary's files gone, say: the next look tries again
                log.exception("the canary's check failed")

    async def _served_sums(self) -> dict[str, OnlineSums]:
        served = [v for v in (self._versions.version, self._versions.canary and self._versions.canary.version) if v]
        if not served:
            return {}
        return await self._store.sums(datetime.now(UTC) - METRICS_PERIOD, served)
