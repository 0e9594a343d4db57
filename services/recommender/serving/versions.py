"""The one route into serving, in every process (TensorFlow Serving's manager): a version is loaded and verified,
warmed, swapped in, its subscribers told, and the old one dropped once no request holds it; whatever the reason:
start-up, a retrain's promotion, following another process's change, a rollback.

Versions come from the registry (which one is active) and the artifact store (its files). A version whose files
fail verification is marked failed in the registry and never serves; one whose files are only missing here is
retried quietly (its files may arrive), and each reason is logged once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from recommender.model.hybrid import HybridModel, warm
from recommender.storage.artifacts import ArtifactCorrupt, ArtifactError, ArtifactStore
from recommender.storage.registry import Registry, Status, VersionRecord

log = logging.getLogger(__name__)


class VersionNotFound(LookupError):
    """No such version in the registry, or nothing to roll back to."""


class VersionUnavailable(ValueError):
    """The version is known but cannot serve (rejected, failed, or its artifact is gone or damaged)."""


Subscriber = Callable[[HybridModel], None]


class VersionManager:
    def __init__(self, registry: Registry, store: ArtifactStore) -> None:
        self.registry = registry
        self.store = store
        self._model: HybridModel | None = None
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
            return model

    async def follow(self) -> str | None:
        """Serves the registry's active version if this process serves another (a promotion or a rollback made
        anywhere in the cluster); returns the version it switched to."""
        async with self._changing:
            active = await self.registry.active()
            if active is None or active.version == self.version:
                return None
            model, damaged = await self._load(active.version)
            if damaged is not None:
                await self.registry.mark_failed(active.version, damaged, self.version)
            if model is None:
                return None
            self._swap(model, "the registry's active version")
            return active.version

    async def rollback(self, version: str) -> str:
        """Serves `version` (default: the previously active one) everywhere: loaded here first, then made active
        in the registry in one transaction (every process follows), then swapped in. A failure at any step changes
        nothing. Raises VersionNotFound or VersionUnavailable, or the database's error."""
        async with self._changing:
            target = version or await self._previous()
            record = await self.registry.get(target)
            if record is None:
                raise VersionNotFound(f"no model version {target!r}; GET /api/v1/models lists them")
            if record.status in (Status.REJECTED, Status.FAILED):
                raise VersionUnavailable(f"version {target} was {record.status.value}: it has no model to serve")
            model, damaged = await self._load(target)
            if damaged is not None:
                await self.registry.mark_failed(target, damaged)
                raise VersionUnavailable(f"version {target} failed verification: {damaged}")
            if model is None:
                raise VersionUnavailable(
                    f"version {target} has no complete artifact any more (only the last RECOMMENDER_KEEP_VERSIONS "
                    "are kept)"
                )
            reason = f"rolled back from {self.version}" if self.version else "rolled back"
            if record.status is not Status.ACTIVE:
                await self.registry.activate(target, reason)
            self._swap(model, reason)
            return target

    async def available(self) -> set[str]:
        """The versions whose artifacts can still be loaded."""
        return await self.store.available()

    async def _previous(self) -> str:
        available = await self.store.available()
        for record in await self.registry.retired():
            if record.version in available:
                return record.version
        raise VersionNotFound("no earlier version to roll back to")

    async def _fallback(self) -> HybridModel | None:
        for record in await self.registry.retired():
            model, _damaged = await self._load(record.version)
            if model is not None:
                return model
        return None

    async def _load(self, version: str) -> tuple[HybridModel | None, str | None]:
        """The version verified and warmed; else None and, when its files are damaged, why."""
        try:
            model = await self.store.load(version)
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


def is_available(record: VersionRecord, available: set[str]) -> bool:
    """Whether a rollback to `record` could serve it."""
    return record.status in (Status.ACTIVE, Status.RETIRED) and record.version in available
