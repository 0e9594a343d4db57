"""The model registry in PostgreSQL: every version, its parameters, metrics, status and the reason for it.

The database enforces what the cluster relies on: at most one active version (a partial unique index), and every
change of status in one transaction that also sends the change notice every process follows. Every change of the
active version is a compare-and-set on the version it replaces (under a transaction-scoped advisory lock): a
change decided against a version that is no longer active raises ActiveChanged and changes nothing, so that no
process overrides what another decided meanwhile (a retrain gated against the version a rollback replaced, a
promotion by hand racing the canary's judge).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

from recommender.storage.db import Database
from recommender.storage.events import Event, Kind, notify

# Taken by every transaction that changes the active version, so that reading it and replacing it are one step.
_ACTIVE_LOCK = 0x61637476  # "actv"


class NoCanary(LookupError):
    """No canary runs."""


class ActiveChanged(RuntimeError):
    """The active version is no longer the one a change was decided against."""

    def __init__(self, expected: str | None, current: str | None) -> None:
        self.expected, self.current = expected, current
        super().__init__(
            f"the active version changed meanwhile: it is {current or 'none'}, not {expected or 'none'} (another "
            "change went first); look again and retry"
        )


class Status(StrEnum):
    ACTIVE = "active"  # the version that serves
    CANARY = "canary"  # serves a share of the users beside the active one
    REJECTED = "rejected"  # the promotion gate said no (offline, or a canary's online test)
    RETIRED = "retired"  # served before; can be rolled back to while its artifact is kept
    FAILED = "failed"  # its retrain failed, or its artifact failed verification


class Outcome(StrEnum):
    """What the retrain that made a version decided (its status may change later; this does not)."""

    PROMOTED = "promoted"
    CANARY = "canary"  # became a canary (RECOMMENDER_CANARY=auto); its online test decides the rest
    REJECTED = "rejected"
    FAILED = "failed"


@dataclass(frozen=True)
class VersionRecord:
    version: str
    status: Status
    outcome: Outcome = Outcome.PROMOTED
    reason: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    data_sizes: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)
    training_seconds: float = 0.0
    created_at: datetime | None = None
    activated_at: datetime | None = None
    canary_share: float | None = None  # while it is the canary
    canary_started_at: datetime | None = None

    @property
    def metrics_before(self) -> dict[str, float]:
        """The active configuration's metrics on the same split, when there was an active version."""
        return self.evaluation.get("active", {})


@dataclass(frozen=True)
class TrialRecord:
    """One configuration a search measured."""

    params: dict[str, Any]
    metrics: dict[str, float]
    score: float
    seconds: float
    fidelity: float = 1.0  # below 1: judged early on a sample and stopped (training/tuning.py)
    elapsed: float | None = None  # seconds since its search started, when it ended
    cost: float | None = None  # a request's model maths with it, millions of multiply-adds (model/cost.py)


_COLUMNS = (
    "version, status, outcome, reason, params, data_sizes, metrics, evaluation, training_seconds, created_at, "
    "activated_at, canary_share, canary_started_at"
)


class Registry:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, record: VersionRecord, replaces: str | None = None) -> None:
        """Stores a new version; an active one replaces the active version (`replaces`, what its gate compared
        against: ActiveChanged when another is active now), which retires; a canary replaces the canary, which is
        rejected, and is judged against `replaces` too."""
        async with self._db.transaction() as conn:
            if record.status in (Status.ACTIVE, Status.CANARY):
                await _expect_active(conn, replaces)
            if record.status is Status.ACTIVE:
                await _retire_active(conn)
            if record.status is Status.CANARY:
                await _reject_canary(conn, f"replaced by the canary {record.version}")
            await conn.execute(
                "INSERT INTO model_versions (version, status, outcome, reason, params, data_sizes, metrics, "
                "evaluation, training_seconds, activated_at, canary_share, canary_started_at) VALUES ($1, $2, $3, "
                "$4, $5::jsonb, $6::jsonb, $7::jsonb, $8::jsonb, $9, CASE WHEN $2 = 'active' THEN now() END, $10, "
                "CASE WHEN $2 = 'canary' THEN now() END)",
                record.version,
                record.status.value,
                record.outcome.value,
                record.reason,
                json.dumps(record.params),
                json.dumps(record.data_sizes),
                json.dumps(record.metrics),
                json.dumps(record.evaluation),
                record.training_seconds,
                record.canary_share if record.status is Status.CANARY else None,
            )
            await notify(conn, Event(Kind.VERSION))

    async def activate(self, version: str, reason: str, replaces: str | None) -> None:
        """Makes a stored version the active one in place of `replaces` (a rollback), which retires; ActiveChanged
        when another is active now. One transaction."""
        async with self._db.transaction() as conn:
            await _expect_active(conn, replaces)
            await _activate(conn, version, reason)

    async def start_canary(self, version: str, share: float, reason: str) -> datetime:
        """Makes a stored version the canary at `share` (a running canary is rejected); returns when it started.
        One transaction."""
        async with self._db.transaction() as conn:
            await _reject_canary(conn, f"replaced by the canary {version}")
            started: datetime = await conn.fetchval(
                "UPDATE model_versions SET status = 'canary', reason = $2, canary_share = $3, "
                "canary_started_at = now() WHERE version = $1 RETURNING canary_started_at",
                version,
                reason,
                share,
            )
            await notify(conn, Event(Kind.VERSION))
        return started

    async def promote_canary(self, version: str, reason: str, replaces: str | None) -> bool:
        """Makes the canary `version` the active one in place of `replaces` (what it was judged against:
        ActiveChanged when another is active now); False when it is not the canary (any more: another process
        decided first). One transaction."""
        async with self._db.transaction() as conn:
            await _expect_active(conn, replaces)
            still = await conn.fetchval(
                "SELECT 1 FROM model_versions WHERE version = $1 AND status = 'canary' FOR UPDATE", version
            )
            if still is None:
                return False
            await _activate(conn, version, reason)
        return True

    async def abort_canary(self, reason: str, version: str | None = None) -> str | None:
        """Rejects the canary (`version` only, when given); returns its version, None if none ran. Every user gets
        the active version again."""
        async with self._db.transaction() as conn:
            rejected = await _reject_canary(conn, reason, version)
            await notify(conn, Event(Kind.VERSION))
        return rejected

    async def canary(self) -> VersionRecord | None:
        row = await self._db.fetchrow(f"SELECT {_COLUMNS} FROM model_versions WHERE status = 'canary'")
        return _record(row) if row else None

    async def mark_failed(self, version: str, reason: str, fallback: str | None = None) -> None:
        """Marks a version that must never serve (its artifact failed verification); if it was active, `fallback`
        becomes active in the same transaction."""
        async with self._db.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _ACTIVE_LOCK)
            status = await conn.fetchval("SELECT status FROM model_versions WHERE version = $1 FOR UPDATE", version)
            await conn.execute(
                "UPDATE model_versions SET status = 'failed', reason = $2 WHERE version = $1", version, reason
            )
            if status == Status.ACTIVE and fallback is not None:
                await conn.execute(
                    "UPDATE model_versions SET status = 'active', activated_at = now(), reason = $2 WHERE version = $1",
                    fallback,
                    f"serving again: {version} failed verification",
                )
            await notify(conn, Event(Kind.VERSION))

    async def get(self, version: str) -> VersionRecord | None:
        row = await self._db.fetchrow(f"SELECT {_COLUMNS} FROM model_versions WHERE version = $1", version)
        return _record(row) if row else None

    async def active(self) -> VersionRecord | None:
        row = await self._db.fetchrow(f"SELECT {_COLUMNS} FROM model_versions WHERE status = 'active'")
        return _record(row) if row else None

    async def latest(self) -> VersionRecord | None:
        """The version the most recent retrain produced (whatever it decided)."""
        row = await self._db.fetchrow(f"SELECT {_COLUMNS} FROM model_versions ORDER BY created_at DESC LIMIT 1")
        return _record(row) if row else None

    async def versions(self) -> list[VersionRecord]:
        """Every version, newest first."""
        return [
            _record(row) for row in await self._db.fetch(f"SELECT {_COLUMNS} FROM model_versions ORDER BY version DESC")
        ]

    async def retired(self) -> list[VersionRecord]:
        """Versions that served before, the most recently active first (rollback's default is the first)."""
        rows = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM model_versions WHERE status = 'retired' "
            "ORDER BY activated_at DESC NULLS LAST, version DESC"
        )
        return [_record(row) for row in rows]

    async def add_trials(self, version: str | None, trials: list[TrialRecord]) -> None:
        """Records a search's trials (`version`: the retrain's; None for a search of its own)."""
        if not trials:
            return
        await self._db.execute_many(
            "INSERT INTO tuning_trials "
            "(version, params, metrics, score, seconds, fidelity, elapsed_seconds, cost_madds) "
            "VALUES ($1, $2::jsonb, $3::jsonb, $4, $5, $6, $7, $8)",
            [
                (
                    version,
                    json.dumps(t.params),
                    json.dumps(t.metrics),
                    t.score,
                    t.seconds,
                    t.fidelity,
                    t.elapsed,
                    t.cost,
                )
                for t in trials
            ],
        )

    async def best_trials(self, limit: int = 3, days: int = 30) -> list[dict[str, Any]]:
        """The parameters of the best distinct configurations measured in full in the last `days` (where the next
        search starts)."""
        rows = await self._db.fetch(
            "SELECT params FROM (SELECT DISTINCT ON (params) params, score FROM tuning_trials "
            "WHERE created_at > now() - make_interval(days => $2) AND fidelity >= 1 ORDER BY params, score DESC) best "
            "ORDER BY score DESC LIMIT $1",
            limit,
            days,
        )
        return [json.loads(row["params"]) for row in rows]


async def _expect_active(conn: asyncpg.Connection, expected: str | None) -> None:
    """Holds the active version still until the transaction ends; ActiveChanged unless it is `expected`."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _ACTIVE_LOCK)
    current: str | None = await conn.fetchval("SELECT version FROM model_versions WHERE status = 'active'")
    if current != expected:
        raise ActiveChanged(expected, current)


async def _retire_active(conn: asyncpg.Connection) -> None:
    await conn.execute("UPDATE model_versions SET status = 'retired' WHERE status = 'active'")


async def _activate(conn: asyncpg.Connection, version: str, reason: str) -> None:
    """`version` becomes the active one (the active one retires), and every process hears of it."""
    await _retire_active(conn)
    await conn.execute(
        "UPDATE model_versions SET status = 'active', reason = $2, activated_at = now(), canary_share = NULL "
        "WHERE version = $1",
        version,
        reason,
    )
    await notify(conn, Event(Kind.VERSION))


async def _reject_canary(conn: asyncpg.Connection, reason: str, version: str | None = None) -> str | None:
    rejected: str | None = await conn.fetchval(
        "UPDATE model_versions SET status = 'rejected', reason = $1, canary_share = NULL WHERE status = 'canary' "
        "AND ($2::text IS NULL OR version = $2) RETURNING version",
        reason,
        version,
    )
    return rejected


def _record(row: asyncpg.Record) -> VersionRecord:
    return VersionRecord(
        version=row["version"],
        status=Status(row["status"]),
        outcome=Outcome(row["outcome"]),
        reason=row["reason"],
        params=json.loads(row["params"]),
        data_sizes=json.loads(row["data_sizes"]),
        metrics=json.loads(row["metrics"]),
        evaluation=json.loads(row["evaluation"]),
        training_seconds=row["training_seconds"],
        created_at=row["created_at"],
        activated_at=row["activated_at"],
        canary_share=row["canary_share"],
        canary_started_at=row["canary_started_at"],
    )
