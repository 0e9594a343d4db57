"""Which versions may serve, and as what: the rules of a rollback, a canary and a fallback, over the registry's
records. Decisions only; serving/versions.py loads, verifies, swaps and unloads what they choose."""

from __future__ import annotations

from collections.abc import Sequence

from recommender.storage.registry import Status, VersionRecord

_MASK = 2**64 - 1


class VersionNotFound(LookupError):
    """No such version in the registry, or nothing to roll back to."""


class VersionUnavailable(ValueError):
    """The version is known but cannot serve (rejected, failed, or its artifact is gone or damaged)."""


def serves_canary(user_id: int, share: float) -> bool:
    """Whether `user_id` is among a canary's `share` of the users: a fixed hash of the id (SplitMix64's mixer),
    the same in every process and on every replica; a larger share keeps the users of a smaller one."""
    x = (user_id + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return (x ^ (x >> 31)) < share * 2**64


def is_available(record: VersionRecord, available: set[str]) -> bool:
    """Whether `record` can serve from its kept files: the active version, a canary, and a retired version a
    rollback could serve."""
    return record.status in (Status.ACTIVE, Status.CANARY, Status.RETIRED) and record.version in available


def canary_candidate(version: str, record: VersionRecord | None) -> VersionRecord:
    """`record` (the registry's record of `version`) if it may become a canary: any version but the active one
    and a failed one (a rejected version may be tried on a share of the users: the gate judged it offline only)."""
    if record is None:
        raise VersionNotFound(f"no model version {version!r}; GET /api/v1/models lists them")
    if record.status is Status.ACTIVE:
        raise VersionUnavailable(f"version {version} is the active version already")
    if record.status is Status.FAILED:
        raise VersionUnavailable(f"version {version} failed: it has no model to serve")
    return record


def rollback_candidate(version: str, record: VersionRecord | None) -> VersionRecord:
    """`record` (the registry's record of `version`) if a rollback may serve it: not rejected, not failed."""
    if record is None:
        raise VersionNotFound(f"no model version {version!r}; GET /api/v1/models lists them")
    if record.status in (Status.REJECTED, Status.FAILED):
        raise VersionUnavailable(f"version {version} was {record.status.value}: it has no model to serve")
    return record


def previous(retired: Sequence[VersionRecord], available: set[str]) -> str:
    """What a rollback without a version serves: the most recent retired version whose files are kept."""
    for record in retired:
        if record.version in available:
            return record.version
    raise VersionNotFound("no earlier version to roll back to")


def fallbacks(retired: Sequence[VersionRecord]) -> list[str]:
    """What serves, in this order of trying, when the active version cannot load: the retired versions, the most
    recent first (the registry lists them so)."""
    return [record.version for record in retired]
