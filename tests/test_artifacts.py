"""The artifact store: complete versions only, a crash mid-write never wins, retention never drops CURRENT."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from recommender.model.dataset import TrainingData
from recommender.model.hybrid import HybridModel
from recommender.model.training import train
from recommender.storage.artifacts import ArtifactError, ArtifactStore
from tests.test_model import BOOKS, PARAMS, interactions


def trained() -> HybridModel:
    return train(TrainingData.from_interactions(BOOKS, interactions()), PARAMS)


def test_a_saved_version_loads_back_identical(tmp_path: Path) -> None:
    store, model = ArtifactStore(tmp_path), trained()
    store.save(model)
    store.set_current(model.meta.version)
    loaded = store.load_latest()
    assert loaded is not None and loaded.meta.version == model.meta.version
    assert loaded.recommend(2, 5) == model.recommend(2, 5)
    assert loaded.recommend(999, 5, [(12, 1.0)]) == model.recommend(999, 5, [(12, 1.0)])


def test_half_written_and_corrupt_versions_are_skipped(tmp_path: Path) -> None:
    store, good = ArtifactStore(tmp_path), trained()
    store.save(good)
    store.set_current(good.meta.version)
    # A crash while writing: the incoming folder, and a newer version folder without its manifest.
    (tmp_path / ".incoming-99990101T000000000000Z-aaaaaa").mkdir()
    partial = store.versions_dir / "99990101T000000000000Z-bbbbbb"
    partial.mkdir()
    (partial / "cf.npz").write_bytes(b"truncated")
    # A newer version that claims completeness but cannot be read, named CURRENT.
    corrupt = store.versions_dir / "99990101T000000000000Z-cccccc"
    corrupt.mkdir()
    (corrupt / "manifest.json").write_text('{"format": 1, "trained_at": "2026-01-01T00:00:00+00:00"}')
    (tmp_path / "CURRENT").write_text(corrupt.name)

    assert store.complete_versions()[0] == corrupt.name
    with pytest.raises(ArtifactError):
        store.load(corrupt.name)
    loaded = store.load_latest()
    assert loaded is not None and loaded.meta.version == good.meta.version


def test_set_current_refuses_an_incomplete_version(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    (store.versions_dir / "v1").mkdir(parents=True)
    with pytest.raises(ArtifactError):
        store.set_current("v1")
    assert store.current() is None and store.load_latest() is None


def saved_versions(store: ArtifactStore, count: int) -> list[str]:
    versions = []
    for _ in range(count):
        model = trained()
        store.save(model)
        versions.append(model.meta.version)
    return versions


def test_prune_keeps_the_newest_and_the_current(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    versions = saved_versions(store, 4)
    store.set_current(versions[0])  # the oldest is current (a rollback, say)
    removed = store.prune(keep=2)
    assert sorted(removed) == sorted(versions[1:2])
    assert sorted(store.complete_versions()) == sorted([versions[0], *versions[2:]])


def test_prune_never_deletes_a_version_a_live_process_serves(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    versions = saved_versions(store, 4)
    store.set_current(versions[3])
    store.mark_serving(versions[0])  # this test's process: alive
    dead = store.serving_dir / f"{socket.gethostname()}-{dead_pid()}"
    dead.write_text(versions[1] + "\n")
    assert store.served_versions() == {f"{socket.gethostname()}-{os.getpid()}": versions[0]}
    assert not dead.exists()  # a dead process's marker is dropped
    assert sorted(store.prune(keep=1)) == sorted(versions[1:3])
    assert sorted(store.complete_versions()) == sorted([versions[0], versions[3]])
    store.unmark_serving()
    assert store.prune(keep=1) == [versions[0]]


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid
