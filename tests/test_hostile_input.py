"""Hostile input over HTTP, through the real Envoy and service: limits on every field, strict JSON bodies, no
request from another web site or Host name, bodies too large refused by Envoy, and clean statuses for what fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from bench.servers import ROOT, Server, start_server
from tests.support.database import Template

JSON = {"Content-Type": "application/json"}
BROKEN_PEM = "-----BEGIN PUBLIC KEY-----\nnonsense\n-----END PUBLIC KEY-----\n"


def post(http: httpx.Client, path: str, body: object) -> httpx.Response:
    return http.post(path, json=body)


@pytest.mark.parametrize(
    ("book", "detail"),
    [
        ({"book_id": 9001, "title": "x" * 3_000_000}, "books[0].title is 3000000 characters long; at most 500"),
        ({"book_id": 9001, "title": "Nul\u0000Title"}, "books[0].title must not contain NUL characters"),
        ({"book_id": 9001, "title": "t", "authors": "a" * 2001}, "books[0].authors is 2001 characters long"),
        ({"book_id": 9001, "title": "t", "description": "d" * 10_001}, "books[0].description is 10001 characters"),
        ({"book_id": 9001, "title": "t", "genres": [f"g{i}" for i in range(101)]}, "has 101 genres; at most 100"),
        ({"book_id": 9001, "title": "t", "genres": ["g" * 101]}, "books[0].genres[0] is 101 characters long"),
        ({"book_id": 9001, "title": "t", "published_year": -50000}, "published_year must be a year between -3000"),
        ({"book_id": 9001, "title": "t", "ratng": 5}, 'unknown field "books[0].ratng" in the request body'),
    ],
)
def test_every_book_field_has_a_limit_and_nothing_is_written_past_it(
    http: httpx.Client, book: dict[str, object], detail: str
) -> None:
    answer = post(http, "/api/v1/books", {"books": [book]})
    assert answer.status_code == 400, answer.text
    assert detail in answer.json()["detail"]
    assert len(answer.text) < 600  # never the input echoed whole
    assert http.get("/api/v1/books/9001/similar").status_code == 404  # nothing written


def test_unknown_fields_and_loose_booleans_are_refused_naming_them(http: httpx.Client) -> None:
    typo = post(http, "/api/v1/interactions", {"interactions": [{"user_id": 1, "book_id": 2, "ratng": 5}]})
    assert (typo.status_code, typo.json()) == (
        400,
        {"detail": 'unknown field "interactions[0].ratng" in the request body'},
    )
    loose = post(http, "/api/v1/retrain", {"force": "yes"})
    assert (loose.status_code, loose.json()) == (400, {"detail": '"force" must be true or false, got "yes"'})
    assert http.get("/api/v1/health").json()["status"] == "ok"  # no retrain started
    camel = post(http, "/api/v1/interactions", {"interactions": [{"userId": 77001, "bookId": 2}]})
    assert camel.status_code == 200  # the JSON mapping's lowerCamelCase names are the same fields


def test_ratings_read_back_as_written(http: httpx.Client) -> None:
    assert post(http, "/api/v1/interactions", {"interactions": [{"user_id": 77002, "book_id": 3, "rating": 2.7}]})
    read = http.get("/api/v1/users/77002/interactions").json()["interactions"]
    assert [(r["book_id"], r["rating"]) for r in read] == [(3, 2.7)]


def test_a_huge_version_string_is_a_short_400_and_other_clients_never_notice(
    http: httpx.Client, server: Server
) -> None:
    def recommend(user: int) -> int:
        path = f"/api/v1/recommendations?user_id={user % 100 + 1}&limit=3"
        return httpx.get(server.url + path, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        others = pool.map(recommend, range(300))
        answer = post(http, "/api/v1/model/rollback", {"version": "v" * 1_000_000})
        nul = post(http, "/api/v1/model/rollback", {"version": "a\u0000b"})
        statuses = list(others)
    assert answer.status_code == 400 and len(answer.text) < 400 and "(1000000 characters)" in answer.text
    assert nul.status_code == 400 and "must be a model version" in nul.json()["detail"]
    assert statuses == [200] * 300


@pytest.mark.parametrize("size", [4_194_305, 5_900_000, 9_800_000])
@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_limit_is_413_from_envoy_whatever_its_transfer_encoding(
    http: httpx.Client, size: int, chunked: bool
) -> None:
    body = b'{"version": "' + b"v" * (size - 15) + b'"}'
    content = iter([body[: size // 2], body[size // 2 :]]) if chunked else body  # an iterator is sent chunked
    answer = http.post("/api/v1/model/rollback", content=content, headers=JSON)
    assert answer.status_code == 413
    assert answer.json() == {"detail": "the request body is larger than 4194304 bytes, the most this API takes"}
    assert http.get("/api/v1/health").status_code == 200


def test_oversize_headers_are_431_and_no_size_refusal_is_ever_429(http: httpx.Client) -> None:
    assert http.get("/api/v1/health", headers={"x-request-id": "r" * 10_000}).status_code == 200  # under the limit
    answer = http.get("/api/v1/health", headers={"x-request-id": "r" * 20_000})
    assert (answer.status_code, answer.json()) == (
        431,
        {"detail": "the request headers are larger than 16 KiB, the most this API takes"},
    )
    many = http.get("/api/v1/health", headers={f"x-h{i}": "1" for i in range(120)})  # small ones: the count
    assert (many.status_code, many.json()) == (
        431,
        {"detail": "the request has more than 100 headers, the most this API takes"},
    )


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl, for an HTTP/2 client")
def test_over_http2_oversize_headers_reset_the_stream_as_the_readme_says(server: Server) -> None:
    h2c = ["curl", "--http2-prior-knowledge", "-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}"]
    health = f"{server.url}/api/v1/health"
    fine = subprocess.run([*h2c, health], capture_output=True, text=True, timeout=30, check=False)
    assert fine.stdout == "200 2"  # Envoy speaks HTTP/2 on the same port
    large = subprocess.run(
        [*h2c, "-H", "x-big: " + "b" * 20_000, health],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert (large.returncode, large.stdout.split()[0]) == (92, "000")  # curl's "stream error": no 431 over HTTP/2


def test_query_strings_as_browsers_send_them(http: httpx.Client) -> None:
    book = {"book_id": 950_200, "title": "Panels", "genres": ["Graphic Novel"], "published_year": 2099}
    assert http.post("/api/v1/books", json={"books": [book]}, headers=JSON).status_code == 200
    for query_string in ("genre=graphic+novel", "genre=graphic%20novel"):
        listed = http.get(f"/api/v1/books/new?{query_string}&limit=3").json()["books"]
        assert [b["book_id"] for b in listed][:1] == [950_200], query_string


def test_a_header_name_grpc_cannot_carry_is_a_400_not_a_500(http: httpx.Client) -> None:
    for name in ("#i", "x|y", "p-~aqu^*m"):
        answer = http.get("/api/v1/recommendations", params={"user_id": 1}, headers={name: "1"})
        assert answer.status_code == 400, (name, answer.text)
        assert answer.json() == {
            "detail": f'the header name "{name}" is not allowed: names take a-z, 0-9, "-", "_" and "."'
        }
    assert http.get("/api/v1/health", headers={"x-fine_name.v2": "1"}).status_code == 200


def test_a_body_that_is_not_utf8_is_a_400(http: httpx.Client) -> None:
    answer = http.post("/api/v1/books", content=b'{"books":[{"book_id":9003,"title":"Caf\xe9"}]}', headers=JSON)
    assert answer.status_code == 400 and answer.json() == {"detail": "the request body is not valid UTF-8"}


def test_requests_from_another_web_site_are_refused(http: httpx.Client, server: Server) -> None:
    body = '{"interactions":[{"user_id":77003,"book_id":2}]}'
    evil = http.post("/api/v1/interactions", content=body, headers={"Origin": "http://evil.example", **JSON})
    assert evil.status_code == 403 and "is not this service's origin" in evil.json()["detail"]
    form = http.post("/api/v1/retrain", content="force=true", headers={"Content-Type": "text/plain"})
    assert form.status_code == 415
    assert http.get("/api/v1/users/77003/interactions").json()["interactions"] == []
    own = http.post("/api/v1/interactions", content=body, headers={"Origin": server.url, **JSON})
    assert own.status_code == 200, own.text  # the dashboard's own calls
    rebound = http.get("/api/v1/recommendations?user_id=1", headers={"Host": "evil.example"})
    assert rebound.status_code == 403 and "RECOMMENDER_ALLOWED_HOSTS" in rebound.json()["detail"]
    assert http.post("/api/v1/retrain").status_code in (200, 409)  # the guide's bare POST still works


def test_configured_origins_get_cors(template: Template, tmp_path: Path) -> None:
    origin = "https://app.example.com"
    server = start_server(template.copy(tmp_path), tmp_path, cors_origins=origin, allowed_hosts="*")
    try:
        preflight = httpx.options(
            f"{server.url}/api/v1/interactions",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.headers.get("access-control-allow-origin") == origin
        body = {"interactions": [{"user_id": 77004, "book_id": 2}]}
        allowed = httpx.post(f"{server.url}/api/v1/interactions", json=body, headers={"Origin": origin})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == origin
        other = httpx.post(f"{server.url}/api/v1/interactions", json=body, headers={"Origin": "https://evil.example"})
        assert other.status_code == 403
        assert httpx.get(f"{server.url}/api/v1/health", headers={"Host": "anything.example"}).status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("RECOMMENDER_API_KEY", " " * 8, "RECOMMENDER_API_KEY: must not start or end with spaces"),
        ("RECOMMENDER_API_KEY", "short", "RECOMMENDER_API_KEY: must be at least 8 characters long"),
        (
            "RECOMMENDER_JWT_PUBLIC_KEY",
            "-----BEGIN PUBLIC KEY-----\nnonsense\n-----END PUBLIC KEY-----\n",
            "RECOMMENDER_JWT_PUBLIC_KEY: is not a PEM public key",
        ),
        ("RECOMMENDER_ALLOWED_HOSTS", "localhost:8001", "RECOMMENDER_ALLOWED_HOSTS: must be host names"),
        ("RECOMMENDER_CORS_ORIGINS", "app.example.com", "RECOMMENDER_CORS_ORIGINS: must be web origins"),
    ],
)
def test_a_credential_or_setting_that_cannot_work_stops_start_up_naming_it(
    tmp_path: Path, variable: str, value: str, said: str
) -> None:
    env = {**os.environ, variable: value, "RECOMMENDER_DATA_DIR": str(tmp_path), "RECOMMENDER_HTTP_HOST": "0.0.0.0"}
    result = subprocess.run(
        [sys.executable, "server.py"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False
    )
    assert result.returncode == 2 and said in result.stderr, result.stderr
    assert value.strip() == "" or value not in result.stderr or variable.endswith(("HOSTS", "ORIGINS", "PUBLIC_KEY"))
