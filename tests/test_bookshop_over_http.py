"""What a bookshop builds on, through the JSON API (Envoy, `python server.py`, PostgreSQL): filters and hidden books, a
visitor's answer from the books they opened, what is popular now and new, erasures, pages of one ranking, similar
books' errors, and series."""

from __future__ import annotations

import uuid

import httpx

from bench.servers import wait_idle
from tests.support.waiting import wait_for


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
