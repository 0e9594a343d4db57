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
import hashlib
import itertools
import json
import logging
import os
import shutil
import socket
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recommender.model.cf import CFModel
from recommender.model.content import ContentModel, TextEncoder
from recommender.model.hybrid import Catalogue, HybridModel, ModelMeta
from recommender.model.params import TrainingParams
from recommender.processes import is_alive
from recommender.storage.db import Database

log = logging.getLogger(__name__)

FORMAT = 2
MANIFEST = "manifest.json"
INCOMING = ".incoming-"


class ArtifactError(Exception):
    """A version cannot be served from this store."""


class ArtifactMissing(ArtifactError):
    """The version's files are not here (never written, pruned, or half-written when a process died)."""


class ArtifactCorrupt(ArtifactError):
    """The version's files are here but wrong: a checksum that does not match, a file that does not parse, values
    that are not finite. It must never serve."""


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
    return local if shared is None else DatabaseArtifactStore(local, shared)


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
            _write_atomically(self._marker(os.getpid()), version + "\n")
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
            _write_files(incoming, model)
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
            _fsync(path)
        target = self.versions_dir / version
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        os.rename(incoming, target)
        _fsync(self.versions_dir)
        return target

    def read(self, version: str) -> HybridModel:
        """The version, its files verified against the manifest's checksums and every number checked finite."""
        folder = self.versions_dir / version
        try:
            text = (folder / MANIFEST).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ArtifactMissing(f"version {version} is not here (pruned, or never completed)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ArtifactCorrupt(f"version {version}: {MANIFEST} cannot be read: {exc}") from exc
        try:
            manifest: dict[str, Any] = json.loads(text)
            if manifest.get("format") != FORMAT:
                raise ArtifactCorrupt(
                    f"version {version} has format {manifest.get('format')}, this release reads {FORMAT}"
                )
            _verify(folder, manifest["files"])
            return _read_files(folder, manifest)
        except ArtifactError:
            raise
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            raise ArtifactCorrupt(f"version {version} cannot be read: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class DatabaseArtifactStore:
    """The local folder as a cache of every version's files kept in PostgreSQL, for replicas on hosts that share
    no disk: a version trained anywhere can be loaded everywhere."""

    local: LocalArtifactStore
    db: Database

    @property
    def root(self) -> Path:
        return self.local.root

    async def save(self, model: HybridModel) -> None:
        await self.local.save(model)
        files = await asyncio.to_thread(self.local.files, model.meta.version)
        await self.db.save_artifact_files(model.meta.version, files)

    async def load(self, version: str) -> HybridModel:
        if not self.local.is_complete(version):
            files = await self.db.artifact_files(version)
            if not files:
                raise ArtifactMissing(f"version {version} is neither here nor in the database")
            await asyncio.to_thread(self.local.install, version, files)
            log.info("fetched model version %s from the database", version)
        return await self.local.load(version)

    async def available(self) -> set[str]:
        return await self.local.available() | set(await self.db.artifact_versions())

    async def remove(self, versions: Iterable[str]) -> None:
        doomed = list(versions)
        await self.local.remove(doomed)
        await self.db.delete_artifact_files(doomed)

    async def clean(self, registered: set[str]) -> list[str]:
        stored = set(await self.db.artifact_versions())
        await self.db.delete_artifact_files(stored - registered)
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

_TEXT = tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]


def _pack_text(values: Sequence[str]) -> _TEXT:
    """Strings as one UTF-8 blob and n + 1 offsets: the size is the total text, whatever the longest string."""
    encoded = [value.encode("utf-8") for value in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def _unpack_text(blob: npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64]) -> list[str]:
    if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(blob) or np.any(np.diff(offsets) < 0):
        raise ArtifactCorrupt("text offsets do not match the text")
    data = blob.tobytes()
    return [data[start:end].decode("utf-8") for start, end in itertools.pairwise(offsets)]


def _write_files(folder: Path, model: HybridModel) -> None:
    titles, title_offsets = _pack_text(model.catalogue.titles)
    authors, author_offsets = _pack_text(model.catalogue.authors)
    np.savez(
        folder / "catalogue.npz",
        book_ids=model.catalogue.book_ids,
        titles=titles,
        title_offsets=title_offsets,
        authors=authors,
        author_offsets=author_offsets,
    )
    np.savez(
        folder / "cf.npz",
        user_ids=model.cf.user_ids,
        item_ids=model.cf.item_ids,
        user_factors=model.cf.user_factors,
        item_factors=model.cf.item_factors,
    )
    # Uncompressed: zlib took 0.9 s of a 1M-interaction save, for files the disk holds easily.
    sp.save_npz(folder / "cf_user_items.npz", model.cf.user_items, compressed=False)
    sp.save_npz(folder / "content_features.npz", model.content.features, compressed=False)
    np.save(folder / "content_vectors.npy", model.content.vectors)
    encoder = model.content.encoder
    if encoder is not None:
        vocabulary, vocabulary_offsets = _pack_text(encoder.vocabulary)
        arrays: dict[str, npt.NDArray[Any]] = {
            "vocabulary": vocabulary,
            "vocabulary_offsets": vocabulary_offsets,
            "idf": encoder.idf,
        }
        if encoder.components is not None:
            arrays["components"] = encoder.components
        np.savez(folder / "content_encoder.npz", **arrays)  # type: ignore[arg-type]
    files = {path.name: _describe(path) for path in sorted(folder.iterdir())}
    manifest = {
        "format": FORMAT,
        "version": model.meta.version,
        "trained_at": model.meta.trained_at.isoformat(),
        "training_seconds": model.meta.training_seconds,
        "num_users": model.cf.num_users,
        "num_items": model.cf.num_items,
        "matrix_nnz": model.cf.nnz,
        "num_books": model.content.num_books,
        "feature_dim": model.content.feature_dim,
        "params": model.meta.params.as_dict(),
        "metrics": model.meta.metrics,
        "snapshot": model.meta.snapshot,
        "files": files,
    }
    _write_atomically(folder / MANIFEST, json.dumps(manifest, indent=2))  # last: it marks the version complete


def _describe(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(folder: Path, files: dict[str, dict[str, Any]]) -> None:
    for name, expected in files.items():
        path = folder / Path(name).name
        if not path.is_file():
            raise ArtifactCorrupt(f"{folder.name}: {name} is missing")
        if path.stat().st_size != expected["bytes"] or _sha256(path) != expected["sha256"]:
            raise ArtifactCorrupt(f"{folder.name}: {name} does not match its checksum")


def _finite(name: str, values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ArtifactCorrupt(f"{name} holds values that are not finite")
    return values


def _read_files(folder: Path, manifest: dict[str, Any]) -> HybridModel:
    with np.load(folder / "catalogue.npz", allow_pickle=False) as arrays:
        catalogue = Catalogue(
            arrays["book_ids"],
            _unpack_text(arrays["titles"], arrays["title_offsets"]),
            _unpack_text(arrays["authors"], arrays["author_offsets"]),
        )
    params = TrainingParams().with_values(manifest["params"])
    with np.load(folder / "cf.npz", allow_pickle=False) as arrays:
        user_items = sp.csr_matrix(sp.load_npz(folder / "cf_user_items.npz"))
        cf = CFModel(
            user_ids=arrays["user_ids"],
            item_ids=arrays["item_ids"],
            user_factors=_finite("user factors", arrays["user_factors"]),
            item_factors=_finite("item factors", arrays["item_factors"]),
            user_items=user_items,
            params=params.als,
        )
    _finite("interaction weights", cf.user_items.data)
    features = sp.csr_matrix(sp.load_npz(folder / "content_features.npz"))
    _finite("TF-IDF features", features.data)
    vectors = _finite("content vectors", np.load(folder / "content_vectors.npy", allow_pickle=False))
    content = ContentModel(features, vectors, _read_encoder(folder / "content_encoder.npz"))
    shapes_agree = (
        len(catalogue.book_ids) == len(catalogue.titles) == content.num_books == len(vectors)
        and len(catalogue.authors) == len(catalogue.book_ids)
        and cf.user_factors.shape[0] == cf.num_users == cf.user_items.shape[0]
        and cf.item_factors.shape[0] == cf.num_items == cf.user_items.shape[1]
    )
    if not shapes_agree:
        raise ArtifactCorrupt("the arrays' sizes do not agree with each other")
    meta = ModelMeta(
        manifest["version"],
        datetime.fromisoformat(manifest["trained_at"]),
        float(manifest["training_seconds"]),
        params,
        {name: float(value) for name, value in manifest.get("metrics", {}).items()},
        str(manifest.get("snapshot", "")),
    )
    return HybridModel.assemble(meta, catalogue, cf, content)


def _read_encoder(path: Path) -> TextEncoder | None:
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as arrays:
        components = _finite("SVD components", arrays["components"]) if "components" in arrays.files else None
        vocabulary = _unpack_text(arrays["vocabulary"], arrays["vocabulary_offsets"])
        return TextEncoder(vocabulary, _finite("IDF weights", arrays["idf"]), components)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
