"""Converts the real data sets in ../shared/data into `recommender import` CSV files (never committed).

    .venv/bin/python -m bench.convert goodbooks OUT_DIR    # Goodreads sample, with genres and descriptions
    .venv/bin/python -m bench.convert goodbooks-described OUT_DIR  # the same, cut to the 2,880 described books
    .venv/bin/python -m bench.convert movielens OUT_DIR    # MovieLens latest-small, tags as descriptions
    .venv/bin/python -m bench.convert demo OUT_DIR         # the demo catalogue a new service starts with

Each writes OUT_DIR/books.csv and OUT_DIR/interactions.csv.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from recommender.model.catalogue import Catalogue
from recommender.model.content import ContentModel
from recommender.model.dataset import Book, Interaction, TrainingData
from recommender.model.fit import fit_content
from recommender.model.params import TrainingParams
from recommender.storage import importer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BOOK_COLUMNS = ["book_id", "title", "authors", "description", "genres", "published_year"]


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write(path: Path, columns: list[str], rows: Sequence[Sequence[object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)


def goodbooks(out: Path, data: Path = DATA) -> None:
    sample, described = data / "goodbooks-10k-sample", data / "goodbooks-3k-descriptions"
    genres = {row["book_id"]: row["genres"].replace(",", "|") for row in _read(sample / "book_genres.csv")}
    isbn_to_book = {row["isbn_10"]: row["book_id"] for row in _read(described / "isbn_10_to_book_id.csv")}
    descriptions = {
        isbn_to_book[row["isbn_10"]]: row["description"]
        for row in _read(described / "book_details.csv")
        if row["isbn_10"] in isbn_to_book
    }
    books = []
    for row in _read(sample / "books.csv"):
        year = row["original_publication_year"].split(".")[0]
        books.append(
            [
                row["book_id"],
                row["title"],
                row["authors"],
                descriptions.get(row["book_id"], ""),
                genres.get(row["book_id"], ""),
                year if year.lstrip("-").isdigit() else "",
            ]
        )
    _write(out / "books.csv", BOOK_COLUMNS, books)
    ratings = _read(sample / "ratings.csv")
    _write(
        out / "interactions.csv",
        ["user_id", "book_id", "rating"],
        [[r["user_id"], r["book_id"], r["rating"]] for r in ratings],
    )


def goodbooks_described(out: Path, data: Path = DATA) -> None:
    """The Goodreads sample cut to the 2,880 books with descriptions: a smaller, denser catalogue where content
    counts for more."""
    goodbooks(out, data)
    described = {row["book_id"] for row in _read(data / "goodbooks-3k-descriptions" / "isbn_10_to_book_id.csv")}
    for name in ("books.csv", "interactions.csv"):
        rows = _read(out / name)
        _write(out / name, list(rows[0]), [list(r.values()) for r in rows if r["book_id"] in described])


def movielens(out: Path, data: Path = DATA) -> None:
    folder = data / "movielens-small"
    tags: dict[str, list[str]] = defaultdict(list)
    for row in _read(folder / "tags.csv"):
        tags[row["movieId"]].append(row["tag"])
    books = [
        [
            row["movieId"],
            row["title"],
            "",
            " ".join(tags.get(row["movieId"], [])),
            row["genres"].replace("(no genres listed)", ""),
            "",
        ]
        for row in _read(folder / "movies.csv")
    ]
    _write(out / "books.csv", BOOK_COLUMNS, books)
    _write(
        out / "interactions.csv",
        ["user_id", "book_id", "rating", "timestamp"],
        [[r["userId"], r["movieId"], r["rating"], r["timestamp"]] for r in _read(folder / "ratings.csv")],
    )


def demo(out: Path, data: Path = DATA) -> None:
    from recommender.settings import load_settings
    from recommender.storage import demo as generator

    settings = load_settings()
    catalogue = generator.generate(
        settings.demo_seed, settings.demo_books, settings.demo_users, settings.demo_interactions
    )
    write_import_files(out, catalogue.books, catalogue.interactions)


def write_import_files(out: Path, books: Sequence[Book], interactions: Sequence[Interaction]) -> None:
    """OUT/books.csv and OUT/interactions.csv, as `recommender import` reads them."""
    _write(
        out / "books.csv",
        BOOK_COLUMNS,
        [[b.book_id, b.title, b.authors, b.description, "|".join(b.genres), b.published_year or ""] for b in books],
    )
    _write(
        out / "interactions.csv",
        ["user_id", "book_id", "rating", "timestamp"],
        [
            [
                i.user_id,
                i.book_id,
                "" if i.rating is None else i.rating,
                "" if i.timestamp is None else int(i.timestamp),
            ]
            for i in interactions
        ],
    )


CONVERTERS: dict[str, Callable[[Path], None]] = {
    "goodbooks": goodbooks,
    "goodbooks-described": goodbooks_described,
    "movielens": movielens,
    "demo": demo,
}


def training_data(dataset: str) -> TrainingData:
    """A data set converted, then read as `recommender import` reads it."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        CONVERTERS[dataset](out)
        books, interactions = (
            importer.read_books(out / "books.csv"),
            importer.read_interactions(out / "interactions.csv"),
        )
    return TrainingData.from_interactions(books.rows, interactions.rows)


Prepared = tuple[str, TrainingData, tuple[Catalogue, ContentModel]]  # a data set's name, data and content fit


def split_arguments(description: str | None) -> tuple[list[Prepared], list[int]]:
    """The --data (comma-separated names) and --seeds (comma-separated split seeds) of a benchmark that measures
    each data set on each split seed: each data set read (`training_data`) with its catalogue and content model
    (default parameters, fitted once for all its splits), and the seeds."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--data", default="goodbooks,movielens")
    args = parser.parse_args()
    prepared = []
    for name in args.data.split(","):
        data = training_data(name)
        prepared.append((name, data, fit_content(data.books, TrainingParams())))
    return prepared, [int(seed) for seed in args.seeds.split(",")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(CONVERTERS))
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    CONVERTERS[args.dataset](args.out)
    print(f"wrote {args.out / 'books.csv'} and {args.out / 'interactions.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
