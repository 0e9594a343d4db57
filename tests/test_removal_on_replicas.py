"""Books hidden, and readers and books erased, through gRPC on two server processes that share one database: gone from
every replica's answers within two seconds (a hidden book back as soon), and an erasure from every table but its
bare id."""

from __future__ import annotations

import asyncio
import time

import grpc

from recommender.settings import Settings
from recommender.storage import demo
from recommender.storage.db import Database
from recommender.v1 import recommender_pb2 as pb
from tests.support.replicas import FOLLOW_SECONDS
from tests.support.service import RunningService, demo_sizes, status_of
from tests.support.waiting import seconds_until, wait_for


def test_a_hidden_book_leaves_every_replicas_answers_within_seconds_and_comes_back(
    replicas: tuple[RunningService, RunningService], settings: Settings
) -> None:
    first, second = replicas
    user = 7
    shown = [b.book_id for b in second.client.recommend(user, 10).recommendations]
    liked_by = shown[0]
    similar = [b.book_id for b in second.client.similar_books(liked_by, limit=10).books]
    hidden = [shown[1], similar[0]]
    first.client.upsert_books([pb.BookInput(book_id=b, available=False) for b in hidden])

    def gone() -> bool:
        answer = [b.book_id for b in second.client.recommend(user, 10).recommendations]
        like = [b.book_id for b in second.client.similar_books(liked_by, limit=10).books]
        return len(answer) == 10 and not set(hidden) & (set(answer) | set(like))

    assert seconds_until(gone, timeout=10) <= FOLLOW_SECONDS
    # Kept in the data with its other fields, and back when available again.
    first.client.upsert_books([pb.BookInput(book_id=b, available=True) for b in hidden])
    wait_for(lambda: shown[1] in [b.book_id for b in second.client.recommend(user, 10).recommendations], 10)
    titles = {b.book_id: b.title for b in demo.generate(settings.demo_seed, **demo_sizes()).books}
    back = second.client.similar_books(liked_by, limit=10).books
    assert any(b.book_id == similar[0] and b.title == titles[similar[0]] for b in back)


def test_an_erased_reader_leaves_no_row_and_is_a_stranger_on_every_replica(
    replicas: tuple[RunningService, RunningService], settings: Settings
) -> None:
    first, second = replicas
    user, stranger = 7, 987_654
    for running in replicas:
        answer = running.client.recommend(user, 5)  # impressions of theirs
        first.client.record_feedback(
            [
                pb.FeedbackEvent(
                    recommendation_id=answer.recommendation_id, book_id=answer.recommendations[0].book_id, event="click"
                )
            ]
        )
    time.sleep(1.0)  # the impressions written (in batches, within half a second)
    erased = first.client.delete_user(user)
    assert erased.status == "erased" and erased.interactions > 0 and erased.impressions >= 1 and erased.feedback >= 1
    assert _rows_of(settings, "user_id", user) == {"erased_users": 1}  # nothing of theirs but the bare id

    def as_a_stranger() -> bool:
        mine, theirs = second.client.recommend(user, 10), second.client.recommend(stranger, 10)
        return mine.strategy == "popular" and [b.book_id for b in mine.recommendations] == [
            b.book_id for b in theirs.recommendations
        ]

    assert seconds_until(as_a_stranger, timeout=10) <= FOLLOW_SECONDS
    code, message = status_of(lambda: first.client.delete_user(user + 100_000))
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, f"user {user + 100_000} has nothing stored")


def test_an_erased_book_is_gone_from_every_replica_and_every_table(
    replicas: tuple[RunningService, RunningService], settings: Settings
) -> None:
    first, second = replicas
    book = second.client.recommend(5, 10).recommendations[0].book_id
    liked_by = second.client.similar_books(book, limit=1).books[0].book_id
    erased = first.client.delete_book(book)
    assert erased.status == "erased" and erased.interactions > 0

    def gone() -> bool:
        shown = {b.book_id for b in second.client.recommend(5, 10).recommendations}
        similar = {b.book_id for b in second.client.similar_books(liked_by, limit=20).books}
        return book not in shown | similar

    assert seconds_until(gone, timeout=10) <= FOLLOW_SECONDS
    assert _rows_of(settings, "book_id", book) == {"erased_books": 1}
    assert status_of(lambda: first.client.delete_book(book))[0] == grpc.StatusCode.NOT_FOUND


def _rows_of(settings: Settings, column: str, key: int) -> dict[str, int]:
    """Rows holding `key` in `column`, per table of the schema that has that column (partitions counted in their
    parent table)."""

    async def count() -> dict[str, int]:
        async with await Database.connect(settings.database_url or "") as db:
            tables = await db.fetch(
                "SELECT c.table_name FROM information_schema.columns c JOIN pg_class p ON p.relname = c.table_name "
                "WHERE c.column_name = $1 AND c.table_schema = 'public' AND NOT p.relispartition",
                column,
            )
            found = {}
            for row in tables:
                n = await db.fetchval(f"SELECT count(*) FROM {row['table_name']} WHERE {column} = $1", key)
                if n:
                    found[row["table_name"]] = int(n)
            return found

    return asyncio.run(count())
