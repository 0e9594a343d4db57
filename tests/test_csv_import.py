"""`recommender import`: every bad row reported with its line, and all or nothing in the database."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from importlib import resources
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from recommender.model.dataset import TrainingData
from recommender.storage.catalogue import CatalogueStore
from recommender.storage.db import Database
from recommender.storage.snapshot import SnapshotStore
from tests.support.database import active_version, create_database

ROOT = Path(__file__).resolve().parents[1]

BOOKS = """book_id,title,authors,description,genres,published_year
1,Dune,Frank Herbert,Desert planet and spice,science-fiction|classics,1965
2,Emma,Jane Austen,Matchmaking in a village,romance|classics,1815
3,Dracula,Bram Stoker,,horror,
"""
INTERACTIONS = """user_id,book_id,rating,timestamp
1,1,5,1700000000
1,2,,
2,3,3.5,1700000100
"""


def run_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "recommender.cli", *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip


def counts(database_url: str) -> dict[str, int]:
    async def read() -> dict[str, int]:
        async with await Database.connect(database_url, max_size=1) as db:
            return await CatalogueStore(db).counts()

    return asyncio.run(read())


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def table(database_url: str, query: str) -> list[tuple[object, ...]]:
    async def read() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(database_url)
        try:
            return [tuple(row) for row in await conn.fetch(query)]
        finally:
            await conn.close()

    return asyncio.run(read())


def interactions_table(database_url: str) -> list[tuple[object, ...]]:
    return table(database_url, "SELECT * FROM interactions ORDER BY user_id, book_id")


def test_import_writes_books_users_and_interactions(database_url: str, tmp_path: Path) -> None:
    books, interactions = write(tmp_path, "b.csv", BOOKS), write(tmp_path, "i.csv", INTERACTIONS)
    result = run_cli(database_url, "import", "--books", str(books), "--interactions", str(interactions))
    assert result.returncode == 0, result.stderr
    assert "read and imported 3 book rows and 3 interaction rows: 3 new, 0 updated and 0 unchanged" in result.stdout
    assert counts(database_url) == {"books": 3, "users": 2, "interactions": 3}


def test_importing_the_same_file_twice_changes_nothing(database_url: str, tmp_path: Path) -> None:
    books, interactions = write(tmp_path, "b.csv", BOOKS), write(tmp_path, "i.csv", INTERACTIONS)
    assert run_cli(database_url, "import", "--books", str(books), "--interactions", str(interactions)).returncode == 0
    before = interactions_table(database_url)
    again = run_cli(database_url, "import", "--books", str(books), "--interactions", str(interactions))
    assert again.returncode == 0, again.stderr
    assert "0 new, 0 updated and 3 unchanged" in again.stdout
    assert interactions_table(database_url) == before  # timestamps included
    assert counts(database_url) == {"books": 3, "users": 2, "interactions": 3}


def test_a_new_rating_replaces_the_old_one_and_repeats_count_once(database_url: str, tmp_path: Path) -> None:
    books, interactions = write(tmp_path, "b.csv", BOOKS), write(tmp_path, "i.csv", INTERACTIONS)
    assert run_cli(database_url, "import", "--books", str(books), "--interactions", str(interactions)).returncode == 0
    later = write(
        tmp_path,
        "later.csv",
        "user_id,book_id,rating,timestamp\n"
        "1,1,2,1700000500\n"  # rated again later: replaces 5
        "1,1,,1700000600\n"  # read again without a rating: keeps 2, counts once
        "2,3,1,1600000000\n"  # an older rating than the stored one: ignored, but the first contact moves back
        "1,2,4,\n",  # a first rating of a book read before
    )
    result = run_cli(database_url, "import", "--interactions", str(later))
    assert result.returncode == 0, result.stderr
    assert "0 new, 3 updated and 0 unchanged" in result.stdout
    rows = table(
        database_url,
        "SELECT user_id, book_id, rating, extract(epoch FROM occurred_at)::bigint FROM interactions "
        "ORDER BY user_id, book_id",
    )
    assert rows[0] == (1, 1, 2.0, 1700000000)
    assert rows[1][:3] == (1, 2, 4.0)
    assert rows[2] == (2, 3, 3.5, 1600000000)
    assert counts(database_url)["interactions"] == 3


GENRES = ["science-fiction", "classics"]


def test_a_partial_book_update_keeps_the_absent_columns(database_url: str, tmp_path: Path) -> None:
    assert run_cli(database_url, "import", "--books", str(write(tmp_path, "b.csv", BOOKS))).returncode == 0
    title_only = write(tmp_path, "t.csv", "book_id,title\n1,Dune (anniversary edition)\n")
    assert run_cli(database_url, "import", "--books", str(title_only)).returncode == 0
    query = "SELECT title, authors, description, genres, published_year FROM books WHERE book_id = 1"
    assert table(database_url, query) == [
        (
            "Dune (anniversary edition)",
            "Frank Herbert",
            "Desert planet and spice",
            ["science-fiction", "classics"],
            1965,
        )
    ]
    # An empty cell in a column the file has clears that field.
    cleared = write(tmp_path, "c.csv", "book_id,title,description,published_year\n1,Dune,,\n")
    assert run_cli(database_url, "import", "--books", str(cleared)).returncode == 0
    assert table(database_url, query) == [("Dune", "Frank Herbert", "", GENRES, None)]


def test_series_columns_are_imported_together_and_checked(database_url: str, tmp_path: Path) -> None:
    books = (
        "book_id,title,authors,series,series_position\n1,Dune,Frank Herbert,Dune Chronicles,1\n2,Emma,Jane Austen,,\n"
    )
    assert run_cli(database_url, "import", "--books", str(write(tmp_path, "b.csv", books))).returncode == 0
    assert table(database_url, "SELECT book_id, series, series_position FROM books ORDER BY book_id") == [
        (1, "Dune Chronicles", 1.0),
        (2, None, None),
    ]
    bad = write(tmp_path, "bad.csv", "book_id,title,series\n3,Dracula,Stoker tales\n")
    failed = run_cli(database_url, "import", "--books", str(bad))
    assert failed.returncode != 0 and "series and series_position must be given together" in failed.stderr
    assert counts(database_url)["books"] == 2


def test_an_available_column_hides_and_brings_back_books(database_url: str, tmp_path: Path) -> None:
    assert run_cli(database_url, "import", "--books", str(write(tmp_path, "b.csv", BOOKS))).returncode == 0
    query = "SELECT book_id, title, available FROM books WHERE book_id IN (1, 2) ORDER BY book_id"
    hidden = write(tmp_path, "h.csv", "book_id,title,available\n1,Dune,false\n2,Emma,\n")
    assert run_cli(database_url, "import", "--books", str(hidden)).returncode == 0
    assert [(b, a) for b, _title, a in table(database_url, query)] == [(1, False), (2, True)]
    assert run_cli(database_url, "import", "--books", str(write(tmp_path, "t.csv", "book_id,title\n1,Dune II\n")))
    assert table(database_url, query)[0] == (1, "Dune II", False)  # a file without the column leaves it as it is
    bad = run_cli(
        database_url, "import", "--books", str(write(tmp_path, "x.csv", "book_id,title,available\n1,D,perhaps\n"))
    )
    assert bad.returncode == 1 and "available must be true or false, got 'perhaps'" in bad.stderr


def test_a_byte_order_mark_is_accepted(database_url: str, tmp_path: Path) -> None:
    books = tmp_path / "excel.csv"
    books.write_bytes("book_id,title\n1,Dune\n".encode("utf-8-sig"))
    result = run_cli(database_url, "import", "--books", str(books))
    assert result.returncode == 0, result.stderr
    assert counts(database_url)["books"] == 1


def test_bad_rows_are_reported_by_line_and_nothing_is_imported(database_url: str, tmp_path: Path) -> None:
    books = write(tmp_path, "b.csv", BOOKS + "x,No id,,,,\n5,,,,,\n1,Dune again,,,,\n6,Six,,,,later\n")
    interactions = write(tmp_path, "i.csv", INTERACTIONS + "1,99,,\n0,1,,\n1,2,7,\n1,2,4,yesterday\n9001\n1,2,3,4,5\n")
    result = run_cli(database_url, "import", "--books", str(books), "--interactions", str(interactions))
    assert result.returncode == 1
    assert result.stderr[result.stderr.index("nothing imported") :].splitlines() == [
        "nothing imported (7 book rows and 9 interaction rows read); fix these rows:",
        f"{books}:5: book_id must be a whole number, got 'x'",
        f"{books}:6: title must not be empty",
        f"{books}:7: book_id 1 already appears on line 2",
        f"{books}:8: published_year must be a whole number, got 'later'",
        f"{interactions}:5: book_id 99 is not in the catalogue",
        f"{interactions}:6: user_id must be a positive integer below 2^31, got 0",
        f"{interactions}:7: rating must be between 0 and 5, got 7",
        f"{interactions}:8: timestamp must be a number, got 'yesterday'",
        f"{interactions}:9: the row has 1 field(s), the header 4",
        f"{interactions}:10: the row has 5 field(s), the header 4",
    ]
    assert counts(database_url) == {"books": 0, "users": 0, "interactions": 0}


def test_interactions_must_name_known_books(database_url: str, tmp_path: Path) -> None:
    interactions = write(tmp_path, "i.csv", "user_id,book_id\n1,42\n")
    result = run_cli(database_url, "import", "--interactions", str(interactions))
    assert result.returncode == 1
    assert f"{interactions}:2: book_id 42 is not in the catalogue" in result.stderr


def test_missing_columns_and_files_are_clear_errors(database_url: str, tmp_path: Path) -> None:
    books = write(tmp_path, "b.csv", "id,name\n1,x\n")
    result = run_cli(database_url, "import", "--books", str(books))
    assert result.returncode == 2
    assert f"nothing imported: {books}: missing column(s) book_id, title; the header is: id, name" in result.stderr
    missing = run_cli(database_url, "import", "--interactions", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2
    assert f"nothing imported: cannot read {tmp_path / 'nope.csv'}: [Errno 2] No such file" in missing.stderr
    assert "fix these rows" not in missing.stderr


def test_train_command_seeds_an_empty_database_and_writes_a_version(database_url: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "RECOMMENDER_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "RECOMMENDER_DEMO_BOOKS": "300",
        "RECOMMENDER_DEMO_USERS": "100",
        "RECOMMENDER_DEMO_INTERACTIONS": "2000",
    }
    result = subprocess.run(
        [sys.executable, "train.py"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "trained model version" in result.stdout and "300 books" in result.stdout
    current = active_version(database_url)
    assert current is not None and current in result.stdout
    assert (tmp_path / "artifacts" / "versions" / current / "manifest.json").is_file()
    assert counts(database_url)["books"] == 300


def test_training_beside_a_running_service_keeps_the_version_it_serves(database_url: str, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "RECOMMENDER_ARTIFACTS_DIR": str(artifacts),
        "RECOMMENDER_DEMO_BOOKS": "200",
        "RECOMMENDER_DEMO_USERS": "60",
        "RECOMMENDER_DEMO_INTERACTIONS": "1000",
        "RECOMMENDER_KEEP_VERSIONS": "1",
    }

    def train() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "train.py"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False
        )

    assert train().returncode == 0
    served = active_version(database_url)
    assert served is not None
    with subprocess.Popen(["sleep", "60"]) as service:  # stands in for a live server process serving `served`
        marker = artifacts / "serving" / f"{socket.gethostname()}-{service.pid}"
        marker.parent.mkdir()
        marker.write_text(served + "\n")
        result = train()
        result = train()  # two more versions with keep_versions=1: only the served one may survive beside the active
        service.kill()
    assert result.returncode == 0, result.stderr
    assert "running services switch to it within seconds" in result.stdout
    assert (artifacts / "versions" / served / "manifest.json").is_file()


def test_the_migration_merges_earlier_duplicate_events(database_url: str) -> None:
    """A database from before one-row-per-(user, book): summed events become the latest rating, once."""
    first = resources.files("recommender.storage.migrations").joinpath("0001_initial.sql").read_text()

    async def scenario() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(first)
            await conn.execute(
                "CREATE TABLE schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());"
                "INSERT INTO schema_migrations (name) VALUES ('0001_initial.sql');"
                "INSERT INTO books (book_id, title) VALUES (1, 'Dune'); INSERT INTO users VALUES (7);"
                "INSERT INTO interactions (user_id, book_id, rating, weight, occurred_at) VALUES "
                "(7, 1, 5, 5, to_timestamp(100)), (7, 1, 2, 2, to_timestamp(300)), (7, 1, NULL, 1, to_timestamp(400))"
            )
            async with await Database.connect(database_url, max_size=1) as db:
                assert "0002_one_interaction_per_user_book.sql" in await db.migrate()
            rows = await conn.fetch(
                "SELECT user_id, book_id, rating, extract(epoch FROM rated_at)::int, "
                "extract(epoch FROM occurred_at)::int FROM interactions"
            )
            return [tuple(row) for row in rows]
        finally:
            await conn.close()

    assert asyncio.run(scenario()) == [(7, 1, 2.0, 300, 100)]


def test_the_training_snapshot_reads_every_interaction_exactly(
    database_url: str, postgres_url: str, tmp_path: Path
) -> None:
    books, interactions = write(tmp_path, "b.csv", BOOKS), write(tmp_path, "i.csv", INTERACTIONS)
    assert run_cli(database_url, "import", "--books", str(books), "--interactions", str(interactions)).returncode == 0

    async def snapshot() -> TrainingData:
        async with await Database.connect(database_url, max_size=1) as db:
            return await SnapshotStore(db).load_training_data()

    data = asyncio.run(snapshot())
    rows = sorted(zip(data.user_ids.tolist(), data.book_ids.tolist(), data.ratings.tolist(), strict=True))
    assert rows[0] == (1, 1, 5.0) and rows[2] == (2, 3, 3.5)
    assert rows[1][:2] == (1, 2) and np.isnan(rows[1][2])  # unrated
    assert 1700000000 in data.timestamps.tolist() and [b.book_id for b in data.books] == [1, 2, 3]
    assert asyncio.run(_empty_snapshot(create_database(postgres_url))).num_interactions == 0


async def _empty_snapshot(url: str) -> TrainingData:
    async with await Database.connect(url, max_size=1) as db:
        await db.migrate()
        return await SnapshotStore(db).load_training_data()


def test_a_description_may_span_lines(database_url: str, tmp_path: Path) -> None:
    books = write(tmp_path, "b.csv", 'book_id,title,description\n1,Dune,"Desert.\n\nSpice."\n2,Emma,Village\n')
    interactions = write(tmp_path, "i.csv", 'user_id,book_id,rating\n1,1,5\n"2",2,\n')
    result = run_cli(database_url, "import", "--books", str(books), "--interactions", str(interactions))
    assert result.returncode == 0, result.stderr
    assert table(database_url, "SELECT description FROM books ORDER BY book_id") == [
        ("Desert.\n\nSpice.",),
        ("Village",),
    ]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'book_id,title\n7003,"unterminated\n7004,Next Book\n', ":2: this row is not valid CSV"),
        (b"book_id,title\n7003,Nul\x00Title\n", ":2: the row contains a NUL character"),
        (b"book_id,title\n7003,Caf\xe9 latin-1\n", ":2: title is not valid UTF-8"),
        (b"book_id,title\n7003," + b"x" * 3_000_000 + b"\n", ":2: title is 3000000 characters long; at most 500"),
        (b"book_id,title,genres\n7003,Many," + b"|".join(b"g%d" % i for i in range(101)) + b"\n", "at most 100"),
        (b"book_id,title,published_year\n7003,Old,-50000\n", "published_year must be a year between -3000"),
        (b'book_id,title\n7003,"a"b\n', ":2: this row is not valid CSV"),
        # A quote left open that closes two lines later: three rows would become one book with a long title.
        (
            b'book_id,title,authors\n30111,"Quoted title,Ann\n30112,Plain,Bo\n30113,Vinyl 12",Cid\n',
            ":2: a line break inside title (this record runs over lines 2-4): a quote left open on line 2?",
        ),
        (b'book_id,title\n7003,"Two\nLines"\n', ":2: a line break inside title"),
        (b'book_id,title\n"70\n03",T\n', ":2: a line break inside book_id"),
    ],
)
def test_a_file_is_read_strictly_and_nothing_of_it_is_written(
    database_url: str, tmp_path: Path, content: bytes, problem: str
) -> None:
    books = tmp_path / "books.csv"
    books.write_bytes(content)
    result = run_cli(database_url, "import", "--books", str(books))
    assert result.returncode == 1, result.stdout
    assert f"{books}{problem}" in result.stderr if problem.startswith(":") else problem in result.stderr
    assert len(result.stderr) < 2000  # no value is echoed whole
    assert counts(database_url)["books"] == 0


def test_a_time_ahead_of_the_clock_counts_as_now_and_milliseconds_are_refused(
    database_url: str, tmp_path: Path
) -> None:
    books = write(tmp_path, "b.csv", BOOKS)
    ahead = write(tmp_path, "i.csv", "user_id,book_id,rating,timestamp\n1,1,5,4102444000\n")
    result = run_cli(database_url, "import", "--books", str(books), "--interactions", str(ahead))
    assert result.returncode == 0, result.stderr
    (late,) = table(database_url, "SELECT occurred_at <= now() + interval '1 minute' FROM interactions")
    assert late == (True,)  # not in 2099: a clock ahead cannot make an event win the merge for ever
    millis = write(tmp_path, "m.csv", "user_id,book_id,timestamp\n1,2,1700000000000\n")
    result = run_cli(database_url, "import", "--interactions", str(millis))
    assert result.returncode == 1 and "timestamp must be Unix seconds before the year 2100" in result.stderr
