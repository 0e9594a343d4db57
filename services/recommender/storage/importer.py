"""Reads the CSV files of `recommender import`, checking every row; nothing is written unless all rows are good."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from recommender.model.dataset import Book, Interaction

T = TypeVar("T")
MAX_RATING = 5.0


class RowError(ValueError):
    """One bad value; the reader adds the file and line."""


class FileError(ValueError):
    """A file that cannot be read as the import format at all (missing, not UTF-8, missing columns)."""


@dataclass
class Parsed(Generic[T]):
    path: Path | None = None
    columns: frozenset[str] = frozenset()  # the header's columns: absent ones are left as they are in the database
    rows: list[T] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # line number of each row, for later checks
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line, what is wrong)

    def errors(self) -> list[str]:
        """`file:line: problem`, in line order."""
        return [f"{self.path}:{line}: {message}" for line, message in sorted(self.problems, key=lambda p: p[0])]


def read_books(path: Path) -> Parsed[Book]:
    parsed = _read(path, ("book_id", "title"), _book)
    seen: dict[int, int] = {}
    for book, line in zip(parsed.rows, parsed.lines, strict=True):
        if book.book_id in seen:
            parsed.problems.append((line, f"book_id {book.book_id} already appears on line {seen[book.book_id]}"))
        seen.setdefault(book.book_id, line)
    return parsed


def read_interactions(path: Path) -> Parsed[Interaction]:
    return _read(path, ("user_id", "book_id"), _interaction)


def check_books_exist(parsed: Parsed[Interaction], known_book_ids: set[int]) -> None:
    for interaction, line in zip(parsed.rows, parsed.lines, strict=True):
        if interaction.book_id not in known_book_ids:
            parsed.problems.append((line, f"book_id {interaction.book_id} is not in the catalogue"))


def _read(path: Path, required: tuple[str, ...], make: Callable[[dict[str, str]], T]) -> Parsed[T]:
    """Every row, or a FileError when the file as a whole cannot be read."""
    parsed: Parsed[T] = Parsed(path)
    try:
        # utf-8-sig: spreadsheets ("CSV UTF-8") start the file with a byte-order mark.
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [name for name in required if name not in header]
            if missing:
                shown = ", ".join(header) or "(empty)"
                raise FileError(f"{path}: missing column(s) {', '.join(missing)}; the header is: {shown}")
            reader.fieldnames = header
            parsed.columns = frozenset(header)
            for row in reader:
                try:
                    parsed.rows.append(make(_complete(row, len(header))))
                    parsed.lines.append(reader.line_num)
                except RowError as exc:
                    parsed.problems.append((reader.line_num, str(exc)))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FileError(f"cannot read {path}: {exc}") from None
    return parsed


def _complete(row: dict[str | None, str | list[str] | None], width: int) -> dict[str, str]:
    """The row's values, stripped; a RowError when it has more or fewer fields than the header."""
    if None in row:
        raise RowError(f"the row has more fields than the header ({width})")
    absent = [str(name) for name, value in row.items() if value is None]
    if absent:
        raise RowError(f"the row has {width - len(absent)} field(s), the header {width}: no {', '.join(absent)}")
    return {str(name): str(value).strip() for name, value in row.items()}


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
