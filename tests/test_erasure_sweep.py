"""A sweep of erasure through Envoy on two server processes: random readers and books erased while writes and reads
of the same ids run on both; from two seconds after the last DELETE, no answer of either replica names an erased
book or credits an erased reader with what they had, and no call answers 500. Then the same after a retrain that
ran during an erasure, a rollback to a version trained before them all, and a restart."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bench.servers import start_server
from tests.support.database import Template
from tests.support.replicas import (
    FOLLOW_SECONDS,
    KEY,
    Erased,
    Replica,
    readers_of,
    two_replicas,
    widely_read,
)
from tests.support.service import demo_sizes
from tests.support.waiting import wait_for

READERS_CHECKED = 12  # former readers of each erased book asked again


@pytest.fixture(scope="module")
def replicas(template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Replica, Replica]]:
    with two_replicas(template, tmp_path_factory.mktemp("sweep")) as pair:
        yield pair


@pytest.fixture(scope="module")
def erased() -> Erased:
    """Everything the sweep erased, checked again after each later change of what serves."""
    return Erased()


class Traffic:
    """Calls repeated on both replicas from threads until stopped; every status counted."""

    def __init__(self, replicas: tuple[Replica, Replica]) -> None:
        self._replicas = replicas
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.statuses: Counter[str] = Counter()

    def start(self, name: str, method: str, path: str, **options: Any) -> None:
        """`method` `path` (with httpx's `options`) over and over, on each replica in turn."""

        def loop() -> None:
            for replica in itertools.cycle(self._replicas):
                if self._stop.is_set():
                    return
                self.statuses[f"{name} {replica.http.request(method, path, **options).status_code}"] += 1

        self._threads.append(threading.Thread(target=loop))
        self._threads[-1].start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


@settings(
    max_examples=4,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),  # an example takes seconds: no shrinking
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_erasures_amid_writes_and_reads_leave_no_trace_on_either_replica(
    replicas: tuple[Replica, Replica], erased: Erased, data: st.DataObject
) -> None:
    first = replicas[0]
    ranks = data.draw(st.lists(st.integers(0, 40), min_size=1, max_size=2, unique=True), label="books by rank")
    books = sorted({widely_read(first.database, rank) for rank in ranks})
    users = data.draw(
        st.lists(st.integers(1, demo_sizes()["num_users"]), min_size=1, max_size=2, unique=True), label="users"
    )
    readers = {book: readers_of(first.database, book)[:READERS_CHECKED] for book in books}
    traffic = Traffic(replicas)
    for user in users:
        traffic.start("write", "POST", "/api/v1/interactions", json=_read(user, 3))
        traffic.start("read", "GET", "/api/v1/recommendations", params={"user_id": user})
    for i, book in enumerate(books):
        traffic.start("write", "POST", "/api/v1/interactions", json=_read(960_000 + i, book))
        traffic.start("read", "GET", f"/api/v1/books/{book}/similar")
        traffic.start("read", "POST", "/api/v1/recommendations/session", json={"book_ids": [book, 1]})
        traffic.start("read", "GET", "/api/v1/recommendations", params={"user_id": readers[book][0]})
    try:
        time.sleep(0.3)
        targets = [f"/api/v1/books/{b}" for b in books] + [f"/api/v1/users/{u}" for u in users]
        for i, target in enumerate(data.draw(st.permutations(targets), label="order")):
            assert replicas[i % 2].http.delete(target).status_code in (200, 404)
    finally:
        traffic.stop()
    last_delete = time.monotonic()
    erased.books.update(readers)
    erased.users.update(users)
    assert {key for key in traffic.statuses if int(key.rsplit(" ", 1)[1]) >= 500} == set(), dict(traffic.statuses)
    time.sleep(max(last_delete + FOLLOW_SECONDS - time.monotonic(), 0.0))
    for replica in replicas:
        assert erased.problems(replica) == []


def test_erasures_hold_after_a_retrain_during_one_a_rollback_and_a_restart(
    replicas: tuple[Replica, Replica], erased: Erased, tmp_path_factory: pytest.TempPathFactory
) -> None:
    first, second = replicas
    before = first.http.get("/api/v1/model/info").json()["version"]
    assert first.http.post("/api/v1/retrain", json={"force": True}).status_code == 200
    book = widely_read(first.database, 0)
    erased.books[book] = readers_of(first.database, book)[:READERS_CHECKED]
    assert second.http.delete(f"/api/v1/books/{book}").status_code == 200  # while the retrain runs
    for replica in replicas:
        wait_for(partial(_serves_other_than, replica, before), timeout=120)
        assert erased.problems(replica) == []
    rolled = first.http.post("/api/v1/model/rollback", json={"version": before})
    assert rolled.status_code == 200, rolled.text
    assert erased.problems(first) == []
    wait_for(lambda: _serving(second) == before, timeout=FOLLOW_SECONDS)
    assert erased.problems(second) == []
    second.server.stop()
    artifacts = second.server.env["RECOMMENDER_ARTIFACTS_DIR"]
    workdir = tmp_path_factory.mktemp("sweep-restart")
    restarted = start_server(second.database, workdir, API_KEY=KEY, ARTIFACTS_DIR=artifacts)
    replica = Replica(restarted, second.database)
    try:
        assert _serving(replica) == before
        assert erased.problems(replica) == []
    finally:
        replica.http.close()
        restarted.stop()


def _serves_other_than(replica: Replica, version: str) -> bool:
    """Whether `replica` serves a version other than `version`, no retrain running."""
    return _serving(replica) not in ("", version)


def _serving(replica: Replica) -> str:
    info = replica.http.get("/api/v1/model/info").json()
    return "" if info["is_retraining"] else str(info["version"])


def _read(user_id: int, book_id: int) -> dict[str, object]:
    return {"interactions": [{"user_id": user_id, "book_id": book_id, "rating": 5}]}
