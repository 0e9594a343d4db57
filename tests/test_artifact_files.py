"""The artifact store: complete versions only, checksummed and verified, text stored by its size, orphans cleaned,
retention that never drops a protected or a served version."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from recommender.model.dataset import Book, TrainingData
from recommender.model.fit import train
from recommender.model.hybrid import HybridModel
from recommender.model.recommend import recommend
from recommender.storage.artifact_files import MANIFEST, ArtifactCorrupt, ArtifactMissing
from recommender.storage.artifacts import LocalArtifactStore, prune
from tests.support.data import BOOKS, PARAMS, interactions


def trained(books: list[Book] = BOOKS) -> HybridModel:
    return train(TrainingData.from_interactions(books, interactions()), PARAMS)


def test_a_saved_version_loads_back_identical(tmp_path: Path) -> None:
    store, model = LocalArtifactStore(tmp_path), trained()
    store.write(model)
    loaded = store.read(model.meta.version)
    assert loaded.meta == model.meta
    assert loaded.catalogue.titles == model.catalogue.titles and loaded.catalogue.authors == model.catalogue.authors
    assert recommend(loaded, 2, 5) == recommend(model, 2, 5)
    assert recommend(loaded, 999, 5, [(12, 1.0)]) == recommend(model, 999, 5, [(12, 1.0)])
    assert loaded.cf.params == dataclasses.replace(model.cf.params)


def test_half_written_versions_are_missing_and_cleaned_with_unregistered_ones(tmp_path: Path) -> None:
    store, good, orphan = LocalArtifactStore(tmp_path), trained(), trained()
    store.write(good)
    store.write(orphan)  # complete, but the registry never heard of it (its retrain was killed before recording)
    incoming = tmp_path / ".incoming-99990101T000000000000Z-aaaaaa"
    incoming.mkdir()
    partial = store.versions_dir / "99990101T000000000000Z-bbbbbb"
    partial.mkdir()
    (partial / "cf.npz").write_bytes(b"truncated")
    assert store.complete_versions() == sorted([good.meta.version, orphan.meta.version], reverse=True)
    with pytest.raises(ArtifactMissing):
        store.read(partial.name)

    removed = asyncio.run(store.clean({good.meta.version}))
    assert sorted(removed) == sorted([incoming.name.removeprefix(".incoming-"), partial.name, orphan.meta.version])
    assert store.complete_versions() == [good.meta.version] and not incoming.exists() and not partial.exists()


def corrupted(tmp_path: Path, damage: str) -> tuple[LocalArtifactStore, str]:
    store, model = LocalArtifactStore(tmp_path), trained()
    folder = store.write(model)
    if damage == "truncated":
        path = folder / "cf.npz"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "flipped bytes":
        path = folder / "content_features.npz"
        data = bytearray(path.read_bytes())
        for i in range(100, 116):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "missing file":
        (folder / "content_vectors.npy").unlink()
    elif damage == "broken manifest":
        (folder / MANIFEST).write_text('{"format": 2, "files": ')
    elif damage == "NaN with a matching checksum":  # a writer that wrote garbage and checksummed it
        vectors = np.load(folder / "content_vectors.npy")
        vectors[3, 5] = np.nan
        np.save(folder / "content_vectors.npy", vectors)
        manifest = json.loads((folder / MANIFEST).read_text())
        path = folder / "content_vectors.npy"
        manifest["files"]["content_vectors.npy"] = {
            "bytes": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
        (folder / MANIFEST).write_text(json.dumps(manifest))
    return store, model.meta.version


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        ("truncated", "cf.npz does not match its checksum"),
        ("flipped bytes", "content_features.npz does not match its checksum"),
        ("missing file", "content_vectors.npy is missing"),
        ("broken manifest", "cannot be read"),
        ("NaN with a matching checksum", "content vectors holds values that are not finite"),
    ],
)
def test_a_damaged_version_fails_verification(tmp_path: Path, damage: str, said: str) -> None:
    store, version = corrupted(tmp_path, damage)
    with pytest.raises(ArtifactCorrupt, match=said):
        store.read(version)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir())


def test_a_version_grows_with_the_total_text_not_with_the_longest_title(tmp_path: Path) -> None:
    plain = LocalArtifactStore(tmp_path / "plain").write(trained())
    long_title = [dataclasses.replace(BOOKS[0], title="x" * 30_000), *BOOKS[1:]]
    model = trained(long_title)
    store = LocalArtifactStore(tmp_path / "long")
    long = store.write(model)
    # Fixed-width text arrays cost books x the longest string (20 x 30,000 x 4 bytes here; 1.5 GB for 10,000
    # books); stored by size it is a few copies of the word more: the title, and the TF-IDF vocabulary's word and
    # its bigrams.
    assert folder_bytes(long) < folder_bytes(plain) + 5 * 30_000
    assert store.read(model.meta.version).catalogue.titles[0] == "x" * 30_000


def test_prune_keeps_the_newest_the_protected_and_the_served(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    versions = []
    for _ in range(5):
        model = trained()
        store.write(model)
        versions.append(model.meta.version)
    newest_first = sorted(versions, reverse=True)
    store.mark_serving(newest_first[4])  # this test's process: alive
    dead = store.serving_dir / f"{socket.gethostname()}-{dead_pid()}"
    dead.write_text(newest_first[3] + "\n")
    assert store.served_versions() == {newest_first[4]}
    assert not dead.exists()  # a dead process's marker is dropped

    removed = asyncio.run(prune(store, newest_first, protected={newest_first[2]}, keep=2))
    assert removed == [newest_first[3]]
    store.unmark_serving()
    assert asyncio.run(prune(store, newest_first, protected=set(), keep=2)) == sorted(
        newest_first[2:3] + newest_first[4:]
    )
    assert store.complete_versions() == newest_first[:2]


def test_an_unwritable_serving_folder_costs_only_the_marker(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    store.serving_dir.parent.mkdir(parents=True, exist_ok=True)
    store.serving_dir.write_text("not a folder")  # mkdir and writes below it fail
    store.mark_serving("v1")  # logged, never raised
    store.unmark_serving()


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid
