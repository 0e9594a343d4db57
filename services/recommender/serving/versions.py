"""Which version serves: the registry's active one at start-up, and rollbacks to a stored version."""

from __future__ import annotations

import asyncio
import logging

from recommender.model.hybrid import HybridModel, warm
from recommender.serving.manager import ModelManager
from recommender.storage.artifacts import ArtifactError, ArtifactStore
from recommender.storage.db import Database
from recommender.storage.registry import Registry, Status, VersionRecord

log = logging.getLogger(__name__)


class VersionNotFound(LookupError):
    """No such version in the registry, or nothing to roll back to."""


class VersionUnavailable(ValueError):
    """The version is known but cannot serve (rejected, failed, or its artifact was pruned)."""


class Versions:
    def __init__(self, registry: Registry, store: ArtifactStore, shared: Database | None = None) -> None:
        """`shared`: the database that holds every version's files (RECOMMENDER_ARTIFACT_STORE=postgres), for
        versions trained on another host; the local folder is then a cache."""
        self.registry = registry
        self.store = store
        self.shared = shared

    async def load_active(self) -> HybridModel | None:
        """The registry's active version; if its artifact cannot load, the most recent retired one that can (with
        a warning). A registry that is still empty adopts the newest complete artifact on disk (from before the
        registry). None when there is nothing to serve."""
        active = await self.registry.active()
        if active is not None:
            model = await self._try_load(active.version)
            if model is not None:
                return model
        for record in await self.registry.retired():
            model = await self._try_load(record.version)
            if model is not None:
                log.warning(
                    "the active version %s cannot be loaded: serving %s, the most recent retired version that can",
                    active.version if active else "(none)",
                    record.version,
                )
                return model
        if active is None and not await self.registry.versions():
            model = await asyncio.to_thread(self.store.load_latest)
            if model is not None:
                await self.registry.add(_adopted(model))
                log.info("registered version %s, found on disk, as the active version", model.meta.version)
            return model
        return None

    async def follow(self, manager: ModelManager) -> str | None:
        """Serves the registry's active version if this process serves another (a promotion or a rollback made by
        another process: a replica, a worker's main process, `train`); returns the version it switched to."""
        active = await self.registry.active()
        current = manager.model
        if active is None or (current is not None and current.meta.version == active.version):
            return None
        model = await self._try_load(active.version)
        if model is None:
            return None
        manager.swap(model)
        return active.version

    async def rollback(self, manager: ModelManager, version: str) -> str:
        """Serves `version` (default: the previously active one) at once; returns it. Raises Busy while a
        retrain runs, VersionNotFound or VersionUnavailable."""
        with manager.exclusive():
            target = version or await self._previous()
            record = await self.registry.get(target)
            if record is None:
                raise VersionNotFound(f"no model version {target!r}; GET /api/v1/models lists them")
            if record.status in (Status.REJECTED, Status.FAILED):
                raise VersionUnavailable(f"version {target} was {record.status.value}: it has no model to serve")
            model = await self._try_load(target)
            if model is None:
                raise VersionUnavailable(
                    f"version {target} has no complete artifact any more (only the last RECOMMENDER_KEEP_VERSIONS "
                    "are kept)"
                )
            current = manager.model
            reason = f"rolled back from {current.meta.version}" if current else "rolled back"
            await self.registry.activate(target, reason)
            await asyncio.to_thread(self.store.set_current, target)
            manager.swap(model)
            log.info("%s to %s", reason, target)
            return target

    async def _previous(self) -> str:
        for record in await self.registry.retired():
            if self.store.is_complete(record.version) or self.shared is not None:
                return record.version
        raise VersionNotFound("no earlier version to roll back to")

    async def _try_load(self, version: str) -> HybridModel | None:
        if self.shared is not None and not self.store.is_complete(version):
            files = await self.shared.artifact_files(version)
            if files:
                await asyncio.to_thread(self.store.install, version, files)
                log.info("fetched model version %s from the database", version)

        def load() -> HybridModel:
            model = self.store.load(version)
            warm(model)
            return model

        try:
            return await asyncio.to_thread(load)
        except ArtifactError as exc:
            log.warning("model version %s cannot be loaded: %s", version, exc)
            return None


def _adopted(model: HybridModel) -> VersionRecord:
    return VersionRecord(
        model.meta.version,
        Status.ACTIVE,
        reason="found on disk at start-up",
        params=model.meta.params,
        data_sizes={"users": model.cf.num_users, "books": model.content.num_books, "interactions": model.cf.nnz},
        metrics=model.meta.metrics,
        training_seconds=model.meta.training_seconds,
    )
