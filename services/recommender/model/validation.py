"""What the service accepts as data: the same limits over HTTP, gRPC and `recommender import`, so that no input can
corrupt the catalogue, blow up an artifact or break a retrain. Each check returns problems in words a user can
act on, naming the field and the limit and quoting at most a short prefix of the value."""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime

MAX_ID = 2**31 - 1  # ids are 32-bit in the API
MAX_TITLE = 500
MAX_AUTHORS = 2_000  # anthologies list many (the Goodreads sample has 742 characters)
MAX_DESCRIPTION = 10_000
MAX_GENRES = 100  # the Goodreads sample tags books with up to 50
MAX_GENRE = 100
MIN_YEAR, MAX_YEAR = -3000, 2100  # from the oldest written works to a little past now
MAX_RATING = 5.0
# Timestamps are Unix seconds before 2100: milliseconds (and nonsense) are refused; a time ahead of the server's
# clock counts as now (`event_time`), so that no client's clock can make an event win the merge over later ones.
MAX_TIMESTAMP = 4_102_444_799
MAX_VERSION = 64
VERSION = re.compile(r"^[0-9A-Za-z._-]*$")
SHOWN = 40  # characters of a bad value quoted in a message
DEFAULT_LIMIT, MAX_LIMIT = 10, 100  # books in one answer
MAX_BATCH = 1000  # entries per RecordInteractions, UpsertBooks or RecordFeedback call
MAX_FILTER_GENRES, MAX_EXCLUDED = 20, 1000  # a Recommend call's genres and excluded books
MAX_REASON = 500  # characters of a canary abort's reason
MAX_BUCKET_MINUTES, MAX_HISTORY_HOURS = 1440, 2160  # the online history's buckets and span
# The largest request body the gateway takes (1,000 books with long descriptions fit); a larger one is answered 413
# by Envoy itself, with a length or chunked, before anything reaches the service.
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_HEADER_KB = 16  # request headers (a long JWT fits); beyond it, 431
MAX_HEADERS = 100  # request headers, counted; beyond it, 431


def shown(value: object) -> str:
    """`value` for a message: quoted, and cut to a short prefix (a message never echoes a whole large input)."""
    text = str(value)
    if len(text) <= SHOWN:
        return repr(text)
    return f"{text[:SHOWN]!r}... ({len(text)} characters)"


def text_problems(name: str, value: str, limit: int) -> list[str]:
    """A text field: at most `limit` characters, no NUL, valid UTF-8 (text read with surrogateescape keeps the
    bytes that were not)."""
    problems = []
    if "\x00" in value:
        problems.append(f"{name} must not contain NUL characters")
    if any("\udc80" <= c <= "\udcff" for c in value):
        problems.append(f"{name} is not valid UTF-8")
    if len(value) > limit:
        problems.append(f"{name} is {len(value)} characters long; at most {limit} are allowed")
    return problems


def id_problems(name: str, value: int) -> list[str]:
    if not 1 <= value <= MAX_ID:
        return [f"{name} must be a positive integer below 2^31, got {value}"]
    return []


def rating_problems(name: str, value: float | None) -> list[str]:
    if value is not None and not (math.isfinite(value) and 0 <= value <= MAX_RATING):
        return [f"{name} must be between 0 and {MAX_RATING:g}, got {value:g}"]
    return []


def timestamp_problems(name: str, value: float | None) -> list[str]:
    if value is not None and not (math.isfinite(value) and 0 < value <= MAX_TIMESTAMP):
        return [f"{name} must be Unix seconds before the year 2100, got {value:.0f}"]
    return []


def event_time(value: float | None, now: float | None = None) -> float | None:
    """The time an event is stored with: as sent, but never ahead of now (None stays: "now")."""
    if value is None:
        return None
    return min(value, now if now is not None else datetime.now(UTC).timestamp())


def year_problems(name: str, value: int | None) -> list[str]:
    if value is not None and not MIN_YEAR <= value <= MAX_YEAR:
        return [f"{name} must be a year between {MIN_YEAR} and {MAX_YEAR}, got {value}"]
    return []


MAX_SERIES_POSITION = 100_000


def series_problems(prefix: str, series: str | None, position: float | None) -> list[str]:
    """A series and a place in it, given together ("" and None: neither, the title says)."""
    problems = text_problems(f"{prefix}series", series, MAX_TITLE) if series else []
    if bool(series and series.strip()) != (position is not None):
        problems.append(f"{prefix}series and {prefix}series_position must be given together")
    if position is not None and not (math.isfinite(position) and 0 <= position <= MAX_SERIES_POSITION):
        problems.append(f"{prefix}series_position must be a number from 0 to {MAX_SERIES_POSITION}, got {position}")
    return problems


def genre_problems(name: str, genres: tuple[str, ...]) -> list[str]:
    problems = []
    if len(genres) > MAX_GENRES:
        problems.append(f"{name} has {len(genres)} genres; at most {MAX_GENRES} are allowed")
    for i, genre in enumerate(genres[:MAX_GENRES]):
        problems += text_problems(f"{name}[{i}]", genre, MAX_GENRE)
    return problems


def book_text_problems(
    prefix: str,
    title: str | None = None,
    authors: str | None = None,
    description: str | None = None,
    genres: tuple[str, ...] | None = None,
    published_year: int | None = None,
) -> list[str]:
    """The given fields of a book (None: not given); `prefix` names the entry (`books[3].`, or nothing)."""
    problems = []
    if title is not None:
        if not title.strip():
            problems.append(f"{prefix}title must not be empty")
        problems += text_problems(f"{prefix}title", title, MAX_TITLE)
    if authors is not None:
        problems += text_problems(f"{prefix}authors", authors, MAX_AUTHORS)
    if description is not None:
        problems += text_problems(f"{prefix}description", description, MAX_DESCRIPTION)
    if genres is not None:
        problems += genre_problems(f"{prefix}genres", genres)
    problems += year_problems(f"{prefix}published_year", published_year)
    return problems


def version_problems(name: str, value: str) -> list[str]:
    """A model version as a client names it: short, and only the characters versions are made of."""
    if len(value) > MAX_VERSION or not VERSION.match(value):
        return [
            f"{name} must be a model version (letters, digits, '.', '_' and '-', at most {MAX_VERSION}), "
            f"got {shown(value)}"
        ]
    return []


FEEDBACK_EVENTS = ("click", "read", "dismiss")


def recommendation_id_problems(name: str, value: str) -> list[str]:
    """The id of a Recommend answer: a UUID, as the answer gave it."""
    try:
        uuid.UUID(value)
    except ValueError:
        return [f"{name} must be the recommendation_id of a Recommend answer (a UUID), got {shown(value)}"]
    return []


def event_problems(name: str, value: str) -> list[str]:
    if value not in FEEDBACK_EVENTS:
        return [f"{name} must be one of {', '.join(FEEDBACK_EVENTS)}, got {shown(value)}"]
    return []


def share_problems(name: str, value: float) -> list[str]:
    """A share of the users: above 0, below 1."""
    if not (math.isfinite(value) and 0 < value < 1):
        return [f"{name} must be above 0 and below 1, got {shown(value)}"]
    return []
