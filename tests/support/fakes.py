"""In-memory stand-ins for PostgreSQL and the artifact store, with the same rules (one active version, every change
of it a compare-and-set, at most one canary), so that the serving core (version manager, fresh data, retrain
coordinator, canary judge, scheduler) is tested without a database or a process of its own."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recommender.model.answers import ReaderEvents
from recommender.model.dataset import Book, TrainingData
from recommender.model.filters import BookFacts
from recommender.model.fit import train
from recommender.model.hybrid import HybridModel
from recommender.storage.artifact_files import ArtifactCorrupt, ArtifactMissing
from recommender.storage.registry import ActiveChanged, Outcome, Status, VersionRecord
from recommender.storage.sums import OnlineSums
from recommender.training.route import RetrainRoute
from tests.support.data import BOOKS, PARAMS, interactions


def tiny_model(version: str, books: Sequence[Book] = BOOKS) -> HybridModel:
    """A small trained model named `version` (two tastes: tests/support/data.py)."""
    model = train(TrainingData.from_interactions(list(books), interactions()), PARAMS)
    return dataclasses.replace(model, meta=dataclasses.replace(model.meta, version=version, snapshot="snap"))


class MemoryRegistry:
    """The registry's rules in memory."""

    def __init__(self) -> None:
        self.records: dict[str, VersionRecord] = {}
        self.clock = 0

    def add_version(self, version: str, status: Status = Status.RETIRED) -> None:
        self.clock += 1
        stamp = datetime.fromtimestamp(1_700_000_000 + self.clock, UTC)
        self.records[version] = VersionRecord(version, status, created_at=stamp, activated_at=stamp)

    def _set(self, version: str, **changes: Any) -> None:
        self.records[version] = dataclasses.replace(self.records[version], **changes)

    def _expect_active(self, expected: str | None) -> None:
        current = next((r.version for r in self.records.values() if r.status is Status.ACTIVE), None)
        if current != expected:
            raise ActiveChanged(expected, current)

    def _activate(self, version: str, reason: str) -> None:
        for record in list(self.records.values()):
            if record.status is Status.ACTIVE:
                self._set(record.version, status=Status.RETIRED)
        self.clock += 1
        stamp = datetime.fromtimestamp(1_700_000_000 + self.clock, UTC)
        self._set(version, status=Status.ACTIVE, reason=reason, activated_at=stamp, canary_share=None)

    async def add(self, record: VersionRecord, replaces: str | None = None) -> None:
        if record.status in (Status.ACTIVE, Status.CANARY):
            self._expect_active(replaces)
        self.records[record.version] = record
        if record.status is Status.ACTIVE:
            self._activate(record.version, record.reason)

    async def activate(self, version: str, reason: str, replaces: str | None) -> None:
        self._expect_active(replaces)
        self._activate(version, reason)

    async def start_canary(self, version: str, share: float, reason: str) -> datetime:
        await self.abort_canary(f"replaced by the canary {version}")
        started = datetime.now(UTC)
        self._set(version, status=Status.CANARY, reason=reason, canary_share=share, canary_started_at=started)
        return started

    async def promote_canary(self, version: str, reason: str, replaces: str | None) -> bool:
        self._expect_active(replaces)
        if self.records[version].status is not Status.CANARY:
            return False
        self._activate(version, reason)
        return True

    async def abort_canary(self, reason: str, version: str | None = None) -> str | None:
        canary = await self.canary()
        if canary is None or (version is not None and canary.version != version):
            return None
        self._set(canary.version, status=Status.REJECTED, reason=reason, canary_share=None)
        return canary.version

    async def canary(self) -> VersionRecord | None:
        return next((r for r in self.records.values() if r.status is Status.CANARY), None)

    async def mark_failed(self, version: str, reason: str, fallback: str | None = None) -> None:
        was_active = self.records[version].status is Status.ACTIVE
        self._set(version, status=Status.FAILED, outcome=Outcome.FAILED, reason=reason)
        if was_active and fallback is not None:
            self._set(fallback, status=Status.ACTIVE, reason=f"serving again: {version} failed verification")

    async def get(self, version: str) -> VersionRecord | None:
        return self.records.get(version)

    async def active(self) -> VersionRecord | None:
        return next((r for r in self.records.values() if r.status is Status.ACTIVE), None)

    async def versions(self) -> list[VersionRecord]:
        return sorted(self.records.values(), key=lambda r: r.version, reverse=True)

    async def retired(self) -> list[VersionRecord]:
        retired = [r for r in self.records.values() if r.status is Status.RETIRED]
        return sorted(retired, key=lambda r: r.activated_at or datetime.min.replace(tzinfo=UTC), reverse=True)

    async def latest(self) -> VersionRecord | None:
        return max(self.records.values(), key=lambda r: r.created_at or datetime.min.replace(tzinfo=UTC), default=None)


@dataclass
class MemoryStore:
    """Versions' models in memory; a version can be damaged (fails verification) or missing."""

    models: dict[str, HybridModel] = field(default_factory=dict)
    damaged: set[str] = field(default_factory=set)
    loads: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return Path("/nonexistent")

    async def save(self, model: HybridModel) -> None:
        self.models[model.meta.version] = model

    async def load(self, version: str) -> HybridModel:
        self.loads.append(version)
        if version in self.damaged:
            raise ArtifactCorrupt(f"{version}: a checksum does not match")
        if version not in self.models:
            raise ArtifactMissing(f"{version} is not here")
        return self.models[version]

    async def available(self) -> set[str]:
        return set(self.models) - self.damaged

    async def remove(self, versions: Iterable[str]) -> None:
        for version in versions:
            self.models.pop(version, None)

    async def clean(self, registered: set[str]) -> list[str]:
        doomed = sorted(set(self.models) - registered)
        self.removed += doomed
        await self.remove(doomed)
        return doomed

    def mark_serving(self, version: str) -> None: ...

    def unmark_serving(self) -> None: ...

    def served_versions(self) -> set[str]:
        return set()


class MemoryLock:
    """The cluster's retrain lock in memory: one holder at a time."""

    held: bool = False

    def __init__(self, owner: MemoryRoute) -> None:
        self._owner = owner

    async def release(self) -> None:
        self._owner.held = False


class MemoryRoute(RetrainRoute):
    """The retrain route with an in-memory lock (`held`: whether anyone holds it, this process or "another")."""

    held: bool = False

    async def claim(self, announce: bool = True) -> Any:
        if self.held:
            return None
        self.held = True
        return MemoryLock(self)


class MemoryUsers:
    """What FreshData reads from the database: users and books changed since a snapshot, and a user's events."""

    def __init__(self) -> None:
        self.events: dict[int, ReaderEvents] = {}
        self.changed_users: list[int] = []
        self.changed_books: list[Book] = []
        self.erased_books: list[int] = []
        self.erased_users: list[int] = []
        self.reads: list[int] = []

    async def users_changed_since(self, snapshot: str) -> list[int]:
        return list(self.changed_users)

    async def books_changed_since(self, snapshot: str) -> list[Book]:
        return list(self.changed_books)

    async def books_erased_since(self, snapshot: str) -> list[int]:
        return list(self.erased_books)

    async def users_erased_since(self, snapshot: str) -> list[int]:
        return list(self.erased_users)

    async def user_events(self, user_id: int) -> ReaderEvents:
        self.reads.append(user_id)
        return list(self.events.get(user_id, []))

    async def book_facts(self) -> BookFacts:
        return BookFacts.of(self.changed_books)


class CannedSums:
    """The online store's sums, as a test sets them."""

    def __init__(self) -> None:
        self.by_version: dict[str, OnlineSums] = {}

    async def sums(self, since: datetime | None = None, versions: Sequence[str] | None = None) -> dict[str, OnlineSums]:
        return {v: s for v, s in self.by_version.items() if not versions or v in versions}
