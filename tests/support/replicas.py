"""Server processes on one database, seen through their JSON APIs as an outsider sees them: what an answer names,
who read a book, and whether every answer of a replica has forgotten what was erased."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.servers import Server, start_server
from tests.support.database import Template

KEY = "erasure-admin-key-1234"
ADMIN = {"x-api-key": KEY}
FOLLOW_SECONDS = 2.0  # what the README promises between a DELETE and every replica's answers


class Replica:
    """One server process, its JSON API through its own Envoy (with the admin key), and the database they share."""

    def __init__(self, server: Server, database: str) -> None:
        self.server = server
        self.database = database
        self.http = httpx.Client(base_url=server.url, timeout=30, headers=ADMIN)

    def recommend(self, user_id: int, limit: int = 10) -> dict[str, Any]:
        answer = self.http.get("/api/v1/recommendations", params={"user_id": user_id, "limit": limit})
        assert answer.status_code == 200, answer.text
        return answer.json()

    def similar(self, book_id: int, limit: int = 10) -> list[int]:
        answer = self.http.get(f"/api/v1/books/{book_id}/similar", params={"limit": limit})
        assert answer.status_code == 200, answer.text
        return [b["book_id"] for b in answer.json()["books"]]


@contextmanager
def two_replicas(template: Template, workdir: Path) -> Iterator[tuple[Replica, Replica]]:
    """Two `python server.py` processes (each with its Envoy) on one copy of the trained template and one artifacts
    folder, the admin key configured."""
    database = template.copy(workdir)
    artifacts = str(workdir / "artifacts")
    first = start_server(database, workdir / "first", API_KEY=KEY, ARTIFACTS_DIR=artifacts)
    try:
        second = start_server(database, workdir / "second", API_KEY=KEY, ARTIFACTS_DIR=artifacts)
        pair = Replica(first, database), Replica(second, database)
        try:
            yield pair
        finally:
            for replica in pair:
                replica.http.close()
            second.stop()
    finally:
        first.stop()


def named(answer: dict[str, Any]) -> set[int]:
    """Every book an answer names: recommended, or in a `because`."""
    books = answer["recommendations"]
    return {b["book_id"] for b in books} | credited(answer)


def credited(answer: dict[str, Any]) -> set[int]:
    """The books an answer's `because` names."""
    return {r["book_id"] for b in answer["recommendations"] for r in b.get("because", [])}


def query(database: str, sql: str, *args: object) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(fetch())


def readers_of(database: str, book_id: int) -> list[int]:
    rows = query(database, "SELECT user_id FROM interactions WHERE book_id = $1 ORDER BY user_id", book_id)
    return [row["user_id"] for row in rows]


def history_of(database: str, user_id: int) -> set[int]:
    return {row["book_id"] for row in query(database, "SELECT book_id FROM interactions WHERE user_id = $1", user_id)}


def widely_read(database: str, skip: int) -> int:
    """A book read by many readers (the `skip`-th most read), so that answers name it."""
    rows = query(
        database,
        "SELECT book_id FROM interactions WHERE rating IS NULL OR rating >= 3 GROUP BY book_id "
        "ORDER BY count(*) DESC, book_id LIMIT 1 OFFSET $1",
        skip,
    )
    return int(rows[0]["book_id"])


@dataclass
class Erased:
    """What a test erased: each book with readers it had, and each reader."""

    books: dict[int, list[int]] = field(default_factory=dict)
    users: set[int] = field(default_factory=set)

    def hold_on(self, replica: Replica) -> bool:
        return not self.problems(replica)

    def problems(self, replica: Replica) -> list[str]:
        """What `replica` still says of them: an erased book named in an answer (its former readers', a similar
        list, the popular and new lists) or accepted in a session; a `because` naming a book that is not in the
        erased reader's current history (what was written after the erasure)."""
        found = []
        popular = replica.http.get("/api/v1/books/popular", params={"limit": 100}).json()["books"]
        newest = replica.http.get("/api/v1/books/new", params={"limit": 100}).json()["books"]
        listed = {b["book_id"] for b in popular + newest}
        for book, readers in self.books.items():
            found += [f"book {book} named for reader {r}" for r in readers if book in named(replica.recommend(r))]
            if book in listed:
                found.append(f"book {book} listed")
            session = replica.http.post("/api/v1/recommendations/session", json={"book_ids": [book]})
            if session.status_code != 404:
                found.append(f"book {book} accepted in a session: {session.status_code}")
            if replica.http.get(f"/api/v1/books/{book}/similar").status_code != 404:
                found.append(f"book {book} has similar books")
        for user in self.users:
            extra = credited(replica.recommend(user, 20)) - history_of(replica.database, user)
            found += [f"reader {user}'s answer credits book {b}, not in their history now" for b in sorted(extra)]
        return found
