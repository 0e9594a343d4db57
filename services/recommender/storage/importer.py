"""Reads the CSV files of `recommender import`, strictly, checking every row against the limits the API applies
(model/validation.py); nothing is written unless all rows are good.

Strict means: a quote left open, a row with more or fewer fields than the header, a NUL character or bytes that are
not UTF-8 are errors with their line number, never a row silently merged into another or cut short. A quoted field
may span lines (RFC 4180), but only a book's description has a reason to: a line break in any other field is a
quote left open that swallowed the rows after it, and the record is refused with the lines it spans.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from recommender.model import validation
from recommender.model.dataset import Book, Interaction

T = TypeVar("T")

# The only field a line break may be part of (a description's paragraphs).
MULTILINE = frozenset({"description"})
# Fields far beyond any limit of model/validation.py are still read whole, so that the row is refused naming the
# field and its length rather than as unreadable CSV.
FIELD_SIZE_LIMIT = 16 * 1024 * 1024


# A book's series and place are written together: a file with either column updates both.
SERIES = frozenset({"series", "series_position"})


class RowError(ValueError):
    """One bad row; the reader adds the file and line."""


class FileError(ValueError):
    """A file that cannot be read as the import format at all (missing, unreadable, missing columns)."""


@dataclass
class Parsed(Generic[T]):
    path: Path | None = None
    columns: frozenset[str] = frozenset()  # the header's columns: absent ones are left as they are in the database
    rows: list[T] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # line number of each row, for later checks
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line, what is wrong)
    read: int = 0  # rows read, good or bad

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
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_SIZE_LIMIT))
    try:
        # utf-8-sig: spreadsheets ("CSV UTF-8") start the file with a byte-order mark. Bytes that are not UTF-8
        # are kept (surrogateescape) so that the row holding them is named, not the whole file refused.
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = csv.reader(f, strict=True)
            header = [name.strip() for name in next(reader, [])]
            missing = [name for name in required if name not in header]
            if missing:
                shown = ", ".join(header) or "(empty)"
                raise FileError(f"{path}: missing column(s) {', '.join(missing)}; the header is: {shown}")
            parsed.columns = frozenset(header) | (SERIES if SERIES & set(header) else frozenset())
            while True:
                line = reader.line_num + 1  # where the next row starts (a quoted field may span lines)
                try:
                    fields = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:  # a quote left open runs to the end of the file: nothing after it is sure
                    parsed.read += 1
                    parsed.problems.append((line, f"this row is not valid CSV: {exc} (a quote left open?)"))
                    break
                if not fields:
                    continue  # a blank line
                parsed.read += 1
                try:
                    _check_line_breaks(header, fields, line, reader.line_num)
                    parsed.rows.append(make(_row(header, fields)))
                    parsed.lines.append(line)
                except RowError as exc:
                    parsed.problems.append((line, str(exc)))
    except (OSError, csv.Error) as exc:
        raise FileError(f"cannot read {path}: {exc}") from None
    return parsed


def _check_line_breaks(header: list[str], fields: list[str], first: int, last: int) -> None:
    """A RowError naming the record's lines when a field other than MULTILINE holds a line break."""
    broken = [
        name
        for name, value in zip(header, fields, strict=False)
        if name not in MULTILINE and ("\n" in value or "\r" in value)
    ]
    if broken:
        raise RowError(
            f"a line break inside {', '.join(broken)} (this record runs over lines {first}-{last}): a quote left "
            f"open on line {first}? Only {', '.join(sorted(MULTILINE))} may span lines"
        )


def _row(header: list[str], fields: list[str]) -> dict[str, str]:
    """The row's values by column, stripped; a RowError when it has more or fewer fields than the header or holds
    a NUL character."""
    if len(fields) != len(header):
        raise RowError(f"the row has {len(fields)} field(s), the header {len(header)}")
    if any("\x00" in value for value in fields):
        raise RowError("the row contains a NUL character")
    return {name: value.strip() for name, value in zip(header, fields, strict=True)}


def _int(row: dict[str, str], name: str) -> int:
    value = row.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise RowError(f"{name} must be a whole number, got {validation.shown(value)}") from None


def _float(row: dict[str, str], name: str) -> float | None:
    value = row.get(name, "")
    if value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise RowError(f"{name} must be a number, got {validation.shown(value)}") from None


_TRUE, _FALSE = {"", "true", "1", "yes"}, {"false", "0", "no"}


def _flag(row: dict[str, str], name: str) -> bool:
    """A yes/no column: true, 1 or yes (or empty: the default, yes); false, 0 or no."""
    value = row.get(name, "").strip().casefold()
    if value not in _TRUE | _FALSE:
        raise RowError(f"{name} must be true or false, got {validation.shown(row[name])}")
    return value in _TRUE


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise RowError("; ".join(problems))


def _book(row: dict[str, str]) -> Book:
    book_id = _int(row, "book_id")
    year = _int(row, "published_year") if row.get("published_year") else None
    genres = tuple(g.strip() for g in row.get("genres", "").split("|") if g.strip())
    book = Book(
        book_id=book_id,
        title=row.get("title", ""),
        authors=row.get("authors", ""),
        description=row.get("description", ""),
        genres=genres,
        published_year=year,
        available=_flag(row, "available"),
        series=row.get("series", "").strip(),
        series_position=_float(row, "series_position"),
    )
    _raise_if(
        validation.id_problems("book_id", book_id)
        + validation.book_text_problems(
            "", book.title, book.authors, book.description, book.genres, book.published_year
        )
        + validation.series_problems("", book.series, book.series_position)
    )
    return book


def _interaction(row: dict[str, str]) -> Interaction:
    timestamp = _float(row, "timestamp")
    interaction = Interaction(
        user_id=_int(row, "user_id"),
        book_id=_int(row, "book_id"),
        rating=_float(row, "rating"),
        timestamp=validation.event_time(timestamp),
    )
    _raise_if(
        validation.id_problems("user_id", interaction.user_id)
        + validation.id_problems("book_id", interaction.book_id)
        + validation.rating_problems("rating", interaction.rating)
        + validation.timestamp_problems("timestamp", timestamp)
    )
    return interaction
