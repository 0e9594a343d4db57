"""The README's API table and error table are a contract: every status code they document is exercised here
through Envoy, and the codes this file exercises are exactly those the README documents, so that neither can
change without the other (a status change is a breaking change, and the README lists it)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest

from bench.servers import ROOT, Server
from recommender.storage.lock import RetrainLock
from tests.support.database import Template
from tests.support.service import LoopThread
from tests.support.waiting import wait_for

KEY = "contract-admin-key-1234"
UNKNOWN = 77_777_777  # no book, reader or thing has this id
# Documented codes no request can cause in a healthy service; where they are held instead.
ELSEWHERE = {500: "tests/test_hostile_input.py and the fault campaign", 503: "tests/test_database_outage.py"}


@dataclass(frozen=True)
class Case:
    rpc: str  # the API table's RPC, or "" for the error table
    status: int
    call: Callable[[httpx.Client], httpx.Response]
    retraining: bool = False  # asked while a retrain runs in the cluster


def _json(method: str, path: str, body: object) -> Callable[[httpx.Client], httpx.Response]:
    return lambda http: http.request(method, path, json=body)


_JSON = {"content-type": "application/json"}
CASES = [
    Case("RecommendForSession", 404, _json("POST", "/api/v1/recommendations/session", {"book_ids": [UNKNOWN]})),
    Case("DeleteUser", 404, lambda http: http.delete(f"/api/v1/users/{UNKNOWN}")),
    Case("DeleteBook", 404, lambda http: http.delete(f"/api/v1/books/{UNKNOWN}")),
    Case("Retrain", 409, lambda http: http.post("/api/v1/retrain"), retraining=True),
    Case("Rollback", 404, _json("POST", "/api/v1/model/rollback", {"version": "no-such-version"})),
    Case("Rollback", 409, _json("POST", "/api/v1/model/rollback", {}), retraining=True),
    Case("RecordInteractions", 400, _json("POST", "/api/v1/interactions", {"interactions": [{"user_id": 0}]})),
    Case(
        "RecordInteractions",
        400,
        _json("POST", "/api/v1/interactions", {"interactions": [{"user_id": 1, "book_id": UNKNOWN}]}),
    ),
    Case("UpsertBooks", 400, _json("POST", "/api/v1/books", {"books": [{"book_id": UNKNOWN, "authors": "A. N."}]})),
    Case("RecordFeedback", 400, _json("POST", "/api/v1/feedback", {"events": [{"book_id": 1, "event": "stare"}]})),
    Case("StartCanary", 400, _json("POST", "/api/v1/model/canary", {"version": "v1", "share": 2})),
    Case("StartCanary", 404, _json("POST", "/api/v1/model/canary", {"version": "no-such-version"})),
    Case("StartCanary", 409, lambda http: http.post("/api/v1/model/canary", json={"version": _active(http)})),
    Case("PromoteCanary", 409, _json("POST", "/api/v1/model/canary/promote", {})),
    Case("AbortCanary", 409, _json("POST", "/api/v1/model/canary/abort", {})),
    Case("SimilarBooks", 404, lambda http: http.get(f"/api/v1/books/{UNKNOWN}/similar")),
    Case("", 400, lambda http: http.get("/api/v1/recommendations", params={"user_id": "abc"})),
    Case("", 401, lambda http: http.post("/api/v1/retrain", headers={"x-api-key": ""})),
    Case("", 403, lambda http: http.post("/api/v1/retrain", headers={"x-api-key": "not-the-key"})),
    Case("", 404, lambda http: http.get("/api/v1/no-such-path")),
    Case("", 405, lambda http: http.put("/api/v1/health")),
    Case("", 409, _json("POST", "/api/v1/model/canary/promote", {})),
    Case("", 413, lambda http: http.post("/api/v1/books", content=b" " * (4 * 2**20 + 1), headers=_JSON)),
    Case("", 415, lambda http: http.post("/api/v1/retrain", content="force=true", headers={"content-type": "x/y"})),
    Case("", 431, lambda http: http.get("/api/v1/health", headers={"x-big": "b" * 20_000})),
]


def _active(http: httpx.Client) -> str:
    return str(http.get("/api/v1/model/info").json()["version"])


def documented() -> set[tuple[str, int]]:
    """(RPC, status) for each code in a row of the README's API table, ("", status) for the error table's."""
    found = set()
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if row := re.match(r"^\| `[A-Z]+ /api/v1/[^|]*(?:\\\|[^|]*)*\| `(\w+)` \| (.*) \|$", line):
            found |= {(row[1], int(code)) for code in re.findall(r"(?<![\d,.])(4\d\d|503)(?![\d,])", row[2])}
        elif row := re.match(r"^\| (\d{3}(?: / \d{3})*) \| ", line):
            found |= {("", int(code)) for code in row[1].split(" / ")}
    return found


def test_the_cases_here_are_exactly_the_codes_the_readme_documents() -> None:
    exercised = {(case.rpc, case.status) for case in CASES} | {("", status) for status in ELSEWHERE}
    assert documented() == exercised


@pytest.fixture(scope="module")
def server(template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with template.served(tmp_path_factory.mktemp("contract"), API_KEY=KEY) as running:
        yield running


@contextmanager
def retrain_held(server: Server) -> Iterator[None]:
    """The cluster's retrain lock held here, as a retrain elsewhere holds it, until the block ends."""
    loop = LoopThread()
    lock = RetrainLock(server.env["DATABASE_URL"])
    try:
        assert loop.run(lock.acquire())
        wait_for(lambda: server.health()["status"] == "retraining", timeout=10)
        yield
    finally:
        loop.run(lock.release())
        loop.close()


@pytest.mark.parametrize("retraining", [False, True], ids=["idle", "while a retrain runs"])
def test_each_documented_status_is_what_the_service_answers(server: Server, retraining: bool) -> None:
    cases = [case for case in CASES if case.retraining == retraining]
    with (
        httpx.Client(base_url=server.url, timeout=30, headers={"x-api-key": KEY}) as http,
        retrain_held(server) if retraining else _nothing(),
    ):
        answers = {(case.rpc, case.status, i): case.call(http) for i, case in enumerate(cases)}
    wrong = {key: (answer.status_code, answer.text[:200]) for key, answer in answers.items()}
    assert {key: got for key, got in wrong.items() if got[0] != key[1]} == {}
    assert all(set(answer.json()) == {"detail"} for answer in answers.values())


@contextmanager
def _nothing() -> Iterator[None]:
    yield
