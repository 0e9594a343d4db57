"""Versioned model artifacts on disk.

Layout under the artifacts folder:
    versions/<version>/   one complete model: arrays in .npz files (no pickle), manifest.json written last
    CURRENT               the version being served, replaced atomically
    .incoming-<version>/  a version being written; renamed into versions/ only when complete
    serving/<host>-<pid>  the version each running server process serves: never pruned while that process lives

A crash at any point leaves CURRENT naming a complete version, and loading skips any folder without a manifest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import scipy.sparse as sp

from recommender.model.cf import CFModel
from recommender.model.content import DIMENSIONS, ContentModel, TextEncoder, reduce
from recommender.model.hybrid import Catalogue, HybridModel, ModelMeta

log = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.6  # versions written before the alpha was stored with them

FORMAT = 1
MANIFEST = "manifest.json"


class ArtifactError(Exception):
    """A version is missing, incomplete or unreadable."""


@dataclass(frozen=True)
class ArtifactStore:
    root: Path

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def serving_dir(self) -> Path:
        return self.root / "serving"

    def _marker(self, pid: int) -> Path:
        return self.serving_dir / f"{socket.gethostname()}-{pid}"

    def mark_serving(self, version: str) -> None:
        """Records that this process serves `version`, so that no other process prunes it."""
        self.serving_dir.mkdir(parents=True, exist_ok=True)
        _write_atomically(self._marker(os.getpid()), version + "\n")

    def unmark_serving(self) -> None:
        self._marker(os.getpid()).unlink(missing_ok=True)

    def served_versions(self) -> dict[str, str]:
        """Marker name -> version for every live server process (markers of dead local processes are removed)."""
        if not self.serving_dir.is_dir():
            return {}
        host, served = socket.gethostname(), {}
        for marker in self.serving_dir.iterdir():
            name, _, pid = marker.name.rpartition("-")
            if name == host and pid.isdigit() and not psutil.pid_exists(int(pid)):
                marker.unlink(missing_ok=True)
                continue
            try:
                served[marker.name] = marker.read_text(encoding="utf-8").strip()
            except FileNotFoundError:  # its process just stopped
                continue
        return served

    def save(self, model: HybridModel) -> Path:
        """Writes the model as a new complete version; does not make it current."""
        version = model.meta.version
        incoming = self.root / f".incoming-{version}"
        shutil.rmtree(incoming, ignore_errors=True)
        incoming.mkdir(parents=True)
        np.savez(
            incoming / "catalogue.npz",
            book_ids=model.catalogue.book_ids,
            titles=np.array(model.catalogue.titles, dtype=str),
            authors=np.array(model.catalogue.authors, dtype=str),
        )
        np.savez(
            incoming / "cf.npz",
            user_ids=model.cf.user_ids,
            item_ids=model.cf.item_ids,
            user_factors=model.cf.user_factors,
            item_factors=model.cf.item_factors,
        )
        # Uncompressed: zlib took 0.9 s of a 1M-interaction save, for files the disk holds easily.
        sp.save_npz(incoming / "cf_user_items.npz", model.cf.user_items, compressed=False)
        sp.save_npz(incoming / "content_features.npz", model.content.features, compressed=False)
        np.save(incoming / "content_vectors.npy", model.content.vectors)
        encoder = model.content.encoder
        if encoder is not None:
            arrays = {"vocabulary": np.array(encoder.vocabulary, dtype=str), "idf": encoder.idf}
            if encoder.components is not None:
                arrays["components"] = encoder.components
            np.savez(incoming / "content_encoder.npz", **arrays)  # type: ignore[arg-type]
        manifest = {
            "format": FORMAT,
            "version": version,
            "trained_at": model.meta.trained_at.isoformat(),
            "training_seconds": model.meta.training_seconds,
            "num_users": model.cf.num_users,
            "num_items": model.cf.num_items,
            "matrix_nnz": model.cf.nnz,
            "num_books": model.content.num_books,
            "feature_dim": model.content.feature_dim,
            "alpha": model.alpha,
            "params": model.meta.params,
            "metrics": model.meta.metrics,
        }
        _write_atomically(incoming / MANIFEST, json.dumps(manifest, indent=2))
        return self._commit(incoming, version)

    def files(self, version: str) -> dict[str, bytes]:
        """The files of a complete version, by name (to keep a copy in another store)."""
        if not self.is_complete(version):
            raise ArtifactError(f"version {version} is not complete")
        return {path.name: path.read_bytes() for path in (self.versions_dir / version).iterdir() if path.is_file()}

    def install(self, version: str, files: dict[str, bytes]) -> None:
        """Writes a version fetched from another store; like `save`, it is complete or absent."""
        if MANIFEST not in files:
            raise ArtifactError(f"version {version} has no {MANIFEST} in the store it came from")
        incoming = self.root / f".incoming-{version}"
        shutil.rmtree(incoming, ignore_errors=True)
        incoming.mkdir(parents=True)
        for name, data in files.items():
            if name != MANIFEST:
                (incoming / Path(name).name).write_bytes(data)
        (incoming / MANIFEST).write_bytes(files[MANIFEST])  # last: it marks the version complete
        shutil.rmtree(self.versions_dir / version, ignore_errors=True)
        self._commit(incoming, version)

    def _commit(self, incoming: Path, version: str) -> Path:
        for path in incoming.iterdir():
            _fsync(path)
        target = self.versions_dir / version
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        os.rename(incoming, target)
        _fsync(self.versions_dir)
        return target

    def set_current(self, version: str) -> None:
        if not self.is_complete(version):
            raise ArtifactError(f"version {version} is not complete")
        _write_atomically(self.root / "CURRENT", version + "\n")

    def current(self) -> str | None:
        try:
            return (self.root / "CURRENT").read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None

    def is_complete(self, version: str) -> bool:
        return (self.versions_dir / version / MANIFEST).is_file()

    def complete_versions(self) -> list[str]:
        """Complete versions, newest first."""
        if not self.versions_dir.is_dir():
            return []
        names = [p.name for p in self.versions_dir.iterdir() if p.is_dir() and self.is_complete(p.name)]
        return sorted(names, reverse=True)

    def load(self, version: str) -> HybridModel:
        folder = self.versions_dir / version
        try:
            manifest: dict[str, Any] = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            if manifest.get("format") != FORMAT:
                raise ArtifactError(f"version {version} has format {manifest.get('format')}, expected {FORMAT}")
            with np.load(folder / "catalogue.npz", allow_pickle=False) as arrays:
                catalogue = Catalogue(arrays["book_ids"], arrays["titles"].tolist(), arrays["authors"].tolist())
            with np.load(folder / "cf.npz", allow_pickle=False) as arrays:
                cf = CFModel(
                    user_ids=arrays["user_ids"],
                    item_ids=arrays["item_ids"],
                    user_factors=arrays["user_factors"],
                    item_factors=arrays["item_factors"],
                    user_items=sp.csr_matrix(sp.load_npz(folder / "cf_user_items.npz")),
                )
            features = sp.csr_matrix(sp.load_npz(folder / "content_features.npz"))
            vectors_file = folder / "content_vectors.npy"
            vectors = (
                np.load(vectors_file, allow_pickle=False) if vectors_file.exists() else reduce(features, DIMENSIONS)
            )  # versions from before the dense vectors get them computed
            content = ContentModel(features, vectors, _load_encoder(folder / "content_encoder.npz"))
            meta = ModelMeta(
                version,
                datetime.fromisoformat(manifest["trained_at"]),
                manifest["training_seconds"],
                manifest.get("params", {}),
                manifest.get("metrics", {}),
            )
            alpha = float(manifest.get("alpha", meta.params.get("alpha", DEFAULT_ALPHA)))
        except ArtifactError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"version {version} cannot be read: {exc}") from exc
        return HybridModel.assemble(
            meta, alpha, catalogue, cf, content, float(meta.params.get("popularity_prior", 0.0))
        )

    def load_latest(self) -> HybridModel | None:
        """The current version, else the newest complete one that loads; None when there is none."""
        current = self.current()
        candidates = self.complete_versions()
        if current in candidates:
            candidates.remove(current)
            candidates.insert(0, current)
        for version in candidates:
            try:
                return self.load(version)
            except ArtifactError as exc:
                log.warning("skipping model version %s: %s", version, exc)
        return None

    def prune(self, keep: int) -> list[str]:
        """Deletes all but the newest `keep` complete versions, never the current one nor one that a running
        process serves; returns what it deleted."""
        protected = {self.current(), *self.served_versions().values()}
        removed = [v for v in self.complete_versions()[keep:] if v not in protected]
        for version in removed:
            shutil.rmtree(self.versions_dir / version, ignore_errors=True)
        return removed


def _load_encoder(path: Path) -> TextEncoder | None:
    """None for versions saved before books could be added between retrains."""
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as arrays:
        components = arrays["components"] if "components" in arrays.files else None
        return TextEncoder(arrays["vocabulary"].tolist(), arrays["idf"], components)


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
