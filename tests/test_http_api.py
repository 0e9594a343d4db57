"""The guide's JSON API through a real Envoy, started with the real `python server.py`, on real PostgreSQL."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.servers import ROOT, SMALL_DEMO, Server, start_server, wait_idle
from tests.support.database import Template
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


def test_an_http_port_another_gateway_serves_is_not_shared(server: Server, template: Template, tmp_path: Path) -> None:
    """Envoy binds with SO_REUSEPORT unless told not to: a second gateway would silently share the port."""
    port = server.url.rsplit(":", 1)[1]
    second = start_server(template.copy(tmp_path), tmp_path, wait=False, HTTP_PORT=port)
    assert second.process.wait(90) == 1
    assert f"Envoy could not start on 127.0.0.1:{port}" in second.output()
    assert server.health() == {"status": "ok", "models_loaded": True}


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
