"""The one route into serving, in every process (TensorFlow Serving's manager): a version is loaded and verified,
warmed, swapped in, its subscribers told, and the old one dropped once no request holds it; whatever the reason:
start-up, a retrain's promotion, following another process's change, a rollback.

Every change of what serves follows one order:
1. the version is loaded and verified first (here for a rollback or a canary; by the trainer that wrote it, for a
   retrain: training/trainer.py verifies its artifact before it records it);
2. then the registry changes, a compare-and-set on the version it replaces (storage/registry.py), in one
   transaction that notifies every process;
3. then each process loads, verifies, warms and swaps it in on its own (`follow`), this one at once.
A failure at 1 or 2 changes nothing anywhere.

Versions come from the registry (which one is active) and the artifact store (its files). A version whose files
fail verification is marked failed in the registry and never serves; one whose files are only missing here is
retried quietly (its files may arrive), and each reason is logged once.

A canary is a second version served beside the active one to a fixed share of the users (`serves_canary`: the
same users in every process), loaded, verified and warmed the same way. Which version may serve, and as what, is
decided in serving/policy.py; this module only carries it out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from recommender.model.hybrid import HybridModel
from recommender.model.warm import warm
from recommender.serving.policy import (
    VersionUnavailable,
    canary_candidate,
    fallbacks,
    previous,
    rollback_candidate,
    serves_canary,
)
from recommender.storage.artifact_files import ArtifactCorrupt, ArtifactError
from recommender.storage.artifacts import ArtifactStore
from recommender.storage.registry import NoCanary, Status, VersionRecord

log = logging.getLogger(__name__)


class VersionRegistry(Protocol):
    """The model registry as the manager (and the RPCs that show it) use it: storage/registry.py's Registry."""

    async def active(self) -> VersionRecord | None: ...
    async def canary(self) -> VersionRecord | None: ...
    async def get(self, version: str) -> VersionRecord | None: ...
    async def latest(self) -> VersionRecord | None: ...
    async def versions(self) -> list[VersionRecord]: ...
    async def retired(self) -> list[VersionRecord]: ...
    async def activate(self, version: str, reason: str, replaces: str | None) -> None: ...
    async def mark_failed(self, version: str, reason: str, fallback: str | None = None) -> None: ...
    async def start_canary(self, version: str, share: float, reason: str) -> datetime: ...
    async def promote_canary(self, version: str, reason: str, replaces: str | None) -> bool: ...
    async def abort_canary(self, reason: str, version: str | None = None) -> str | None: ...


Subscriber = Callable[[HybridModel], None]
Prepare = Callable[[HybridModel], Awaitable[HybridModel]]


@dataclass(frozen=True)
class CanaryServing:
    model: HybridModel
    share: float
    started_at: datetime

    @property
    def version(self) -> str:
        return self.model.meta.version


class VersionManager:
    def __init__(self, registry: VersionRegistry, store: ArtifactStore, prepare: Prepare | None = None) -> None:
        """`prepare(model)`: what a loaded version becomes before it serves (serving/freshness.py: without what
        was erased since its snapshot)."""
        self.registry = registry
        self.store = store
        self.prepare = prepare
        self._model: HybridModel | None = None
        self._canary: CanaryServing | None = None
        self._changing = asyncio.Lock()  # one change of version at a time in this process
        self._subscribers: list[Subscriber] = []
        self._said: set[str] = set()  # load failures already logged

    @property
    def model(self) -> HybridModel | None:
        """The model serving now (None before the first one)."""
        return self._model

    @property
    def version(self) -> str | None:
        return self._model.meta.version if self._model else None

    @property
    def canary(self) -> CanaryServing | None:
        return self._canary

    def model_for(self, user_id: int) -> HybridModel | None:
        """The model that answers `user_id`: the canary for its share of the users, else the active one."""
        canary = self._canary
        if canary is not None and self._model is not None and serves_canary(user_id, canary.share):
            return canary.model
        return self._model

    def subscribe(self, on_swap: Subscriber) -> None:
        """`on_swap(model)` after every swap, on the event loop (fresh data, metrics, health, ...)."""
        self._subscribers.append(on_swap)

    async def start(self) -> HybridModel | None:
        """Serves the registry's active version or, when it cannot load, the most recent retired one that can.
        A damaged active version is marked failed and that one activated in its place. None: nothing to serve."""
        async with self._changing:
            active = await self.registry.active()
            if active is None:
                return None
            model, damaged = await self._load(active.version)
            if model is None:
                fallback = await self._fallback()
                if damaged is not None:
                    await self.registry.mark_failed(
                        active.version, damaged, fallback.meta.version if fallback else None
                    )
                if fallback is not None:
                    log.warning(
                        "the active version %s cannot serve: serving %s, the most recent retired version that can",
                        active.version,
                        fallback.meta.version,
                    )
                model = fallback
            if model is not None:
                self._swap(model, "start-up")
                await self._follow_canary()
            return model

    async def follow(self) -> str | None:
        """Serves the registry's active version if this process serves another (a promotion or a rollback made
        anywhere in the cluster); returns the version it switched to."""
        async with self._changing:
            active = await self.registry.active()
            switched = None
            if active is not None and active.version != self.version:
                model, damaged = await self._load(active.version)
                if damaged is not None:
                    await self.registry.mark_failed(active.version, damaged, self.version)
                if model is not None:
                    self._swap(model, "the registry's active version")
                    switched = active.version
            await self._follow_canary()
            return switched

    async def start_canary(self, version: str, share: float) -> None:
        """Serves `version` to `share` of the users everywhere: loaded here first, then made the canary in the
        registry (a running canary is rejected), then served. Raises VersionNotFound or VersionUnavailable, or the
        database's error; a failure changes nothing."""
        async with self._changing:
            canary_candidate(version, await self.registry.get(version))
            model = await self._loaded(version)
            started = await self.registry.start_canary(version, share, f"canary for {share:.1%} of the users")
            self._canary = CanaryServing(model, share, started)
            log.info("serving version %s to %.1f%% of the users as a canary", version, 100 * share)

    async def promote_canary(self, reason: str, version: str | None = None, against: str | None = None) -> str:
        """Makes the canary (`version` only, when given) the active version everywhere in place of `against` (what
        it was judged against; default: the version serving here); returns it. Raises NoCanary when none runs (or
        another process decided first), ActiveChanged when the active version is another by now."""
        async with self._changing:
            replaces = against if against is not None else self.version
            record = await self.registry.canary()
            if record is None or (version is not None and record.version != version):
                raise NoCanary("no canary runs")
            canary = self._canary
            model = canary.model if canary and canary.version == record.version else await self._loaded(record.version)
            if not await self.registry.promote_canary(record.version, reason, replaces):
                raise NoCanary("no canary runs")
            self._canary = None
            self._swap(model, reason)
            return record.version

    async def abort_canary(self, reason: str, version: str | None = None) -> str:
        """Stops the canary (`version` only, when given) everywhere: it is rejected; returns it. Raises NoCanary
        when none runs."""
        async with self._changing:
            aborted = await self.registry.abort_canary(reason, version)
            if aborted is None:
                raise NoCanary("no canary runs")
            self._drop_canary(reason)
            return aborted

    async def _follow_canary(self) -> None:
        """Serves the registry's canary, if any, beside the active version."""
        record = await self.registry.canary()
        if record is None:
            if self._canary is not None:
                self._drop_canary("the registry has no canary")
            return
        share = record.canary_share or 0.0
        started = record.canary_started_at or datetime.now(UTC)
        if self._canary is not None and self._canary.version == record.version:
            self._canary = dataclasses.replace(self._canary, share=share, started_at=started)
            return
        model, damaged = await self._load(record.version)
        if damaged is not None:
            await self.registry.mark_failed(record.version, damaged)
        if model is not None:
            self._canary = CanaryServing(model, share, started)
            settle_memory()
            log.info("serving version %s to %.1f%% of the users as a canary", record.version, 100 * share)

    def _drop_canary(self, why: str) -> None:
        if self._canary is not None:
            log.info("canary %s stopped (%s): every user gets version %s", self._canary.version, why, self.version)
            self._canary = None

    async def _loaded(self, version: str) -> HybridModel:
        """`version` loaded and verified; VersionUnavailable (and marked failed, when damaged) otherwise."""
        model, damaged = await self._load(version)
        if damaged is not None:
            await self.registry.mark_failed(version, damaged)
            raise VersionUnavailable(f"version {version} failed verification: {damaged}")
        if model is None:
            raise VersionUnavailable(
                f"version {version} has no complete artifact any more (only the last RECOMMENDER_KEEP_VERSIONS are "
                "kept)"
            )
        return model

    async def rollback(self, version: str) -> str:
        """Serves `version` (default: the previously active one) everywhere: loaded here first, then made active
        in the registry in one transaction in place of the version serving here (every process follows), then
        swapped in. A failure at any step changes nothing. Raises VersionNotFound, VersionUnavailable,
        ActiveChanged (another process changed the active version first), or the database's error."""
        async with self._changing:
            target = version or previous(await self.registry.retired(), await self.store.available())
            record = rollback_candidate(target, await self.registry.get(target))
            model = await self._loaded(target)
            reason = f"rolled back from {self.version}" if self.version else "rolled back"
            if record.status is not Status.ACTIVE:
                await self.registry.activate(target, reason, replaces=self.version)
            if self._canary is not None and self._canary.version == target:
                self._canary = None  # rolled forward to the canary: it serves everyone now
            self._swap(model, reason)
            return target

    async def available(self) -> set[str]:
        """The versions whose artifacts can still be loaded."""
        return await self.store.available()

    async def _fallback(self) -> HybridModel | None:
        for version in fallbacks(await self.registry.retired()):
            model, _damaged = await self._load(version)
            if model is not None:
                return model
        return None

    async def _load(self, version: str) -> tuple[HybridModel | None, str | None]:
        """The version verified and warmed; else None and, when its files are damaged, why."""
        try:
            model = await self.store.load(version)
            if self.prepare is not None:
                model = await self.prepare(model)
            await asyncio.to_thread(warm, model)  # before it takes traffic
        except ArtifactCorrupt as exc:
            self._say(f"model version {version} failed verification and will not serve: {exc}")
            return None, str(exc)
        except (ArtifactError, OSError) as exc:
            self._say(f"model version {version} cannot be loaded here: {exc}")
            return None, None
        return model, None

    def _swap(self, model: HybridModel, why: str) -> None:
        self._model = model
        settle_memory()
        log.info("now serving model version %s (%s)", model.meta.version, why)
        for on_swap in self._subscribers:
            try:
                on_swap(model)
            except Exception:  # a subscriber's trouble never undoes a swap
                log.exception("after swapping in version %s", model.meta.version)

    def _say(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            log.warning("%s", message)


def settle_memory() -> None:
    """The served versions' Python objects (a million titles and authors at a million books) live until the next
    swap: what the collector still tracks is collected (the young garbage of loading a version), then everything
    alive is moved out of its generations, so that no later collection walks it (a full one took 47 ms at 1,000,000
    books, a p99 spike a few times a minute).

    What an earlier settling moved out is never walked again: a replaced version is freed by its references alone
    (it holds no cycle: tests/test_serving_core.py), and what stays of the calls in flight at a swap is a few
    objects. Walking it all again at each swap (unfreezing first) stopped every serving process's event loop for
    100 to 150 ms at each swap, with 10,000 books: the process's own objects (numba's, gRPC's) are most of it."""
    gc.collect()
    gc.freeze()
