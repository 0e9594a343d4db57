"""Versioned model artifacts: written once, complete or absent, checksummed, verified whenever they are loaded.

Layout under the artifacts folder:
    versions/<version>/   one complete model: arrays in .npy/.npz files (no pickle), manifest.json written last with
                          a SHA-256 per file
    .incoming-<version>/  a version being written; renamed into versions/ only when complete
    serving/<host>-<pid>  the version each running server process serves: never pruned while that process lives

The registry (PostgreSQL) says which version is active; the folder only holds files. Text (titles, authors, the
TF-IDF vocabulary) is stored as one UTF-8 blob with offsets, so a version grows with the total text, not with the
number of books times the longest string.

Two stores share one interface, chosen once from the settings (`open_store`): the local folder, or the local folder
as a cache of files kept in PostgreSQL (RECOMMENDER_ARTIFACT_STORE=postgres, for replicas without a shared disk).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from recommender.model.hybrid import HybridModel
from recommender.processes import is_alive
from recommender.storage.artifact_files import (
    MANIFEST,
    ArtifactMissing,
    fsync,
    read_version,
    write_atomically,
    write_version,
)
from recommender.storage.blobs import ArtifactBlobs
from recommender.storage.db import Database

log = logging.getLogger(__name__)

INCOMING = ".incoming-"


class ArtifactStore(Protocol):
    """Where versions live. Every method that touches files or the database is a coroutine."""

    @property
    def root(self) -> Path:
        """The local folder (a cache, for a store that keeps the files elsewhere)."""

    async def save(self, model: HybridModel) -> None:
        """Writes `model` as a new complete version (not active: the registry decides that)."""

    async def load(self, version: str) -> HybridModel:
        """The version, verified; raises ArtifactMissing or ArtifactCorrupt."""

    async def available(self) -> set[str]:
        """The versions this store can load."""

    async def remove(self, versions: Iterable[str]) -> None:
        """Deletes these versions' files."""

    async def clean(self, registered: set[str]) -> list[str]:
        """Deletes what a process that died half-way left (`.incoming-*`, versions the registry does not know);
        only while holding the cluster's retrain lock, so that no retrain is writing. Returns what it removed."""

    def mark_serving(self, version: str) -> None: ...

    def unmark_serving(self) -> None: ...

    def served_versions(self) -> set[str]: ...


def open_store(root: Path, shared: Database | None) -> ArtifactStore:
    """The store the settings ask for: `shared` (the database) when RECOMMENDER_ARTIFACT_STORE=postgres."""
    local = LocalArtifactStore(root)
    return local if shared is None else DatabaseArtifactStore(local, ArtifactBlobs(shared))


@dataclass(frozen=True)
class LocalArtifactStore:
    root: Path

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    async def save(self, model: HybridModel) -> None:
        await asyncio.to_thread(self.write, model)

    async def load(self, version: str) -> HybridModel:
        return await asyncio.to_thread(self.read, version)

    async def available(self) -> set[str]:
        return set(self.complete_versions())

    async def remove(self, versions: Iterable[str]) -> None:
        for version in versions:
            await asyncio.to_thread(shutil.rmtree, self.versions_dir / version, True)

    async def clean(self, registered: set[str]) -> list[str]:
        return await asyncio.to_thread(self._clean, registered)

    def _clean(self, registered: set[str]) -> list[str]:
        removed = []
        leftovers = [p for p in self.root.glob(f"{INCOMING}*") if p.is_dir()]
        if self.versions_dir.is_dir():
            leftovers += [p for p in self.versions_dir.iterdir() if p.is_dir() and p.name not in registered]
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name.removeprefix(INCOMING))
        return removed

    def complete_versions(self) -> list[str]:
        """Versions whose manifest is written, newest first."""
        if not self.versions_dir.is_dir():
            return []
        return sorted((p.name for p in self.versions_dir.iterdir() if (p / MANIFEST).is_file()), reverse=True)

    def is_complete(self, version: str) -> bool:
        return (self.versions_dir / version / MANIFEST).is_file()

    # Which process serves what: a version a live process serves is never pruned.

    @property
    def serving_dir(self) -> Path:
        return self.root / "serving"

    def _marker(self, pid: int) -> Path:
        return self.serving_dir / f"{socket.gethostname()}-{pid}"

    def mark_serving(self, version: str) -> None:
        """Records that this process serves `version`. A folder that cannot be written costs only this protection
        (and is logged): serving goes on."""
        try:
            self.serving_dir.mkdir(parents=True, exist_ok=True)
            write_atomically(self._marker(os.getpid()), version + "\n")
        except OSError as exc:
            log.warning("cannot record the served version in %s: %s", self.serving_dir, exc)

    def unmark_serving(self) -> None:
        try:
            self._marker(os.getpid()).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove this process's marker in %s: %s", self.serving_dir, exc)

    def served_versions(self) -> set[str]:
        """The versions live server processes serve (markers of dead local processes are removed)."""
        if not self.serving_dir.is_dir():
            return set()
        host, served = socket.gethostname(), set()
        for marker in self.serving_dir.iterdir():
            name, _, pid = marker.name.rpartition("-")
            if name == host and pid.isdigit() and not is_alive(int(pid)):
                marker.unlink(missing_ok=True)
                continue
            try:
                served.add(marker.read_text(encoding="utf-8").strip())
            except FileNotFoundError:  # its process just stopped
                continue
        return served

    # The files of one version.

    def write(self, model: HybridModel) -> Path:
        """Writes the model as a new complete version."""
        version = model.meta.version
        incoming = self.root / f"{INCOMING}{version}"
        shutil.rmtree(incoming, ignore_errors=True)
        incoming.mkdir(parents=True)
        try:
            write_version(incoming, model)
            return self._commit(incoming, version)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise

    def files(self, version: str) -> dict[str, bytes]:
        """The files of a complete version, by name (to keep a copy in another store)."""
        if not self.is_complete(version):
            raise ArtifactMissing(f"version {version} is not complete here")
        return {path.name: path.read_bytes() for path in (self.versions_dir / version).iterdir() if path.is_file()}

    def install(self, version: str, files: dict[str, bytes]) -> None:
        """Writes a version fetched from another store; like `write`, it is complete or absent."""
        if MANIFEST not in files:
            raise ArtifactMissing(f"version {version} has no {MANIFEST} in the store it came from")
        incoming = self.root / f"{INCOMING}{version}"
        shutil.rmtree(incoming, ignore_errors=True)
        incoming.mkdir(parents=True)
        try:
            for name, data in files.items():
                if name != MANIFEST:
                    (incoming / Path(name).name).write_bytes(data)
            (incoming / MANIFEST).write_bytes(files[MANIFEST])  # last: it marks the version complete
            shutil.rmtree(self.versions_dir / version, ignore_errors=True)
            self._commit(incoming, version)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise

    def _commit(self, incoming: Path, version: str) -> Path:
        for path in incoming.iterdir():
            fsync(path)
        target = self.versions_dir / version
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        os.rename(incoming, target)
        fsync(self.versions_dir)
        return target

    def read(self, version: str) -> HybridModel:
        """The version, verified (storage/artifact_files.py)."""
        return read_version(self.versions_dir / version, version)


@dataclass(frozen=True)
class DatabaseArtifactStore:
    """The local folder as a cache of every version's files kept in PostgreSQL, for replicas on hosts that share
    no disk: a version trained anywhere can be loaded everywhere."""

    local: LocalArtifactStore
    blobs: ArtifactBlobs

    @property
    def root(self) -> Path:
        return self.local.root

    async def save(self, model: HybridModel) -> None:
        await self.local.save(model)
        files = await asyncio.to_thread(self.local.files, model.meta.version)
        await self.blobs.save(model.meta.version, files)

    async def load(self, version: str) -> HybridModel:
        if not self.local.is_complete(version):
            files = await self.blobs.files(version)
            if not files:
                raise ArtifactMissing(f"version {version} is neither here nor in the database")
            await asyncio.to_thread(self.local.install, version, files)
            log.info("fetched model version %s from the database", version)
        return await self.local.load(version)

    async def available(self) -> set[str]:
        return await self.local.available() | set(await self.blobs.versions())

    async def remove(self, versions: Iterable[str]) -> None:
        doomed = list(versions)
        await self.local.remove(doomed)
        await self.blobs.delete(doomed)

    async def clean(self, registered: set[str]) -> list[str]:
        stored = set(await self.blobs.versions())
        await self.blobs.delete(stored - registered)
        return await self.local.clean(registered)

    def mark_serving(self, version: str) -> None:
        self.local.mark_serving(version)

    def unmark_serving(self) -> None:
        self.local.unmark_serving()

    def served_versions(self) -> set[str]:
        return self.local.served_versions()


async def prune(store: ArtifactStore, registered: Sequence[str], protected: set[str], keep: int) -> list[str]:
    """Deletes the files of all but the newest `keep` registered versions (newest first in `registered`), never a
    `protected` one (the active one, a canary) nor one that a live process serves; returns what it deleted."""
    available = await store.available()
    kept = [v for v in registered if v in available][:keep]
    spared = set(kept) | protected | store.served_versions()
    doomed = sorted(v for v in available if v not in spared)
    await store.remove(doomed)
    return doomed


# The file format.
