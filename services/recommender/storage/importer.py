"""Reads the CSV files of `recommender import`, checking every row; nothing is written unless all rows are good."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from recommender.model.dataset import Book, Interaction

T = TypeVar("T")
MAX_RATING = 5.0


class RowError(ValueError):
    """One bad value; the reader adds the file and line."""


@dataclass
class Parsed(Generic[T]):
    rows: list[T] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # line number of each row, for later checks
    errors: list[str] = field(default_factory=list)


def read_books(path: Path) -> Parsed[Book]:
    parsed = _read(path, ("book_id", "title"), _book)
    seen: dict[int, int] = {}
    for book, line in zip(parsed.rows, parsed.lines, strict=True):
        if book.book_id in seen:
            parsed.errors.append(f"{path}:{line}: book_id {book.book_id} already appears on line {seen[book.book_id]}")
        seen.setdefault(book.book_id, line)
    return parsed


def read_interactions(path: Path) -> Parsed[Interaction]:
    return _read(path, ("user_id", "book_id"), _interaction)


def check_books_exist(parsed: Parsed[Interaction], path: Path, known_book_ids: set[int]) -> None:
    for interaction, line in zip(parsed.rows, parsed.lines, strict=True):
        if interaction.book_id not in known_book_ids:
            parsed.errors.append(f"{path}:{line}: book_id {interaction.book_id} is not in the catalogue")


def _read(path: Path, required: tuple[str, ...], make: Callable[[dict[str, str]], T]) -> Parsed[T]:
    parsed: Parsed[T] = Parsed()
    try:
        for line, row in _rows(path, required):
            try:
                parsed.rows.append(make(row))
                parsed.lines.append(line)
            except RowError as exc:
                parsed.errors.append(f"{path}:{line}: {exc}")
    except (OSError, UnicodeDecodeError, csv.Error, RowError) as exc:
        parsed.errors.append(f"{path}: {exc}")
    return parsed


def _rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in required if name not in header]
        if missing:
            raise RowError(f"missing column(s) {', '.join(missing)}; the header is: {', '.join(header) or '(empty)'}")
        reader.fieldnames = header
        for row in reader:
            if None in row:
                raise RowError(f"line {reader.line_num} has more fields than the header")
            yield reader.line_num, {k: (v or "").strip() for k, v in row.items()}


def _positive_int(row: dict[str, str], name: str) -> int:
    value = row.get(name, "")
    try:
        number = int(value)
    except ValueError:
        raise RowError(f"{name} must be a positive integer, got {value!r}") from None
    if number <= 0:
        raise RowError(f"{name} must be a positive integer, got {value!r}")
    if number >= 2**31:
        raise RowError(f"{name} must be below 2^31, got {value!r}")
    return number


def _optional_float(row: dict[str, str], name: str, low: float, high: float) -> float | None:
    value = row.get(name, "")
    if value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise RowError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise RowError(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return number


def _book(row: dict[str, str]) -> Book:
    title = row.get("title", "")
    if not title:
        raise RowError("title must not be empty")
    year = row.get("published_year", "")
    if year and not year.lstrip("-").isdigit():
        raise RowError(f"published_year must be a whole year, got {year!r}")
    return Book(
        book_id=_positive_int(row, "book_id"),
        title=title,
        authors=row.get("authors", ""),
        description=row.get("description", ""),
        genres=tuple(g.strip() for g in row.get("genres", "").split("|") if g.strip()),
        published_year=int(year) if year else None,
    )


def _interaction(row: dict[str, str]) -> Interaction:
    return Interaction(
        user_id=_positive_int(row, "user_id"),
        book_id=_positive_int(row, "book_id"),
        rating=_optional_float(row, "rating", 0.0, MAX_RATING),
        timestamp=_optional_float(row, "timestamp", 0.0, 32_503_680_000.0),  # up to the year 3000
    )
