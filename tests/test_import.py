"""`recommender import`: every bad row reported with its line, and all or nothing in the database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from recommender.storage.db import Database

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
            return await db.counts()

    return asyncio.run(read())


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_import_writes_books_users_and_interactions(database_url: str, tmp_path: Path) -> None:
    books, interactions = write(tmp_path, "b.csv", BOOKS), write(tmp_path, "i.csv", INTERACTIONS)
    result = run_cli(database_url, "import", "--books", str(books), "--interactions", str(interactions))
    assert result.returncode == 0, result.stderr
    assert "imported 3 books and 3 interactions" in result.stdout
    assert counts(database_url) == {"books": 3, "users": 2, "interactions": 3}

    # Books are upserted: importing again updates them; interactions are events and are appended.
    again = run_cli(database_url, "import", "--books", str(books), "--interactions", str(interactions))
    assert again.returncode == 0, again.stderr
    assert counts(database_url) == {"books": 3, "users": 2, "interactions": 6}


def test_bad_rows_are_reported_by_line_and_nothing_is_imported(database_url: str, tmp_path: Path) -> None:
    books = write(tmp_path, "b.csv", BOOKS + "x,No id\n5,\n6,Six,,,,later\n1,Dune again\n")
    interactions = write(tmp_path, "i.csv", INTERACTIONS + "0,1\n1,99\n1,2,7\n1,2,4,yesterday\n")
    result = run_cli(database_url, "import", "--books", str(books), "--interactions", str(interactions))
    assert result.returncode == 1
    err = result.stderr
    assert "nothing imported" in err
    assert f"{books}:5: book_id must be a positive integer, got 'x'" in err
    assert f"{books}:6: title must not be empty" in err
    assert f"{books}:7: published_year must be a whole year, got 'later'" in err
    assert f"{books}:8: book_id 1 already appears on line 2" in err
    assert f"{interactions}:5: user_id must be a positive integer, got '0'" in err
    assert f"{interactions}:6: book_id 99 is not in the catalogue" in err
    assert f"{interactions}:7: rating must be between 0 and 5, got '7'" in err
    assert f"{interactions}:8: timestamp must be a number, got 'yesterday'" in err
    assert counts(database_url) == {"books": 0, "users": 0, "interactions": 0}


def test_interactions_must_name_known_books(database_url: str, tmp_path: Path) -> None:
    interactions = write(tmp_path, "i.csv", "user_id,book_id\n1,42\n")
    result = run_cli(database_url, "import", "--interactions", str(interactions))
    assert result.returncode == 1
    assert f"{interactions}:2: book_id 42 is not in the catalogue" in result.stderr


def test_missing_columns_and_files_are_clear_errors(database_url: str, tmp_path: Path) -> None:
    books = write(tmp_path, "b.csv", "id,name\n1,x\n")
    result = run_cli(database_url, "import", "--books", str(books), "--interactions", str(tmp_path / "nope.csv"))
    assert result.returncode == 1
    assert "missing column(s) book_id, title; the header is: id, name" in result.stderr
    assert "No such file or directory" in result.stderr


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
    current = (tmp_path / "artifacts" / "CURRENT").read_text().strip()
    assert (tmp_path / "artifacts" / "versions" / current / "manifest.json").is_file()
    assert counts(database_url)["books"] == 300


def test_bad_setting_stops_start_up_naming_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "RECOMMENDER_ALPHA": "lots", "RECOMMENDER_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "server.py"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "RECOMMENDER_ALPHA" in result.stderr and "'lots'" in result.stderr
    assert not (tmp_path / "pgdata").exists()  # nothing started
