"""Requests off the wire: each RPC's message checked against the API's limits (model/validation.py, the same as
for the import) and turned into the service's own values, or refused naming every bad field (serving/errors.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc

from recommender.model import validation
from recommender.model.dataset import Book, Interaction
from recommender.model.filters import Filters
from recommender.model.validation import (
    DEFAULT_LIMIT,
    MAX_BATCH,
    MAX_BUCKET_MINUTES,
    MAX_EXCLUDED,
    MAX_FILTER_GENRES,
    MAX_HISTORY_HOURS,
    MAX_LIMIT,
    MAX_REASON,
)
from recommender.serving.errors import Refused, invalid
from recommender.storage.feedback import Feedback
from recommender.v1 import recommender_pb2 as pb

HISTORY_BUCKET_MINUTES, HISTORY_HOURS = 60, 48  # the online history's defaults
DEFAULT_DAYS, MAX_DAYS = 7, 365  # popular now's window
MAX_OFFSET = 1000  # how deep the pages of one answer go


def positive(name: str, value: int) -> None:
    if value < 1:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{name} must be a positive integer, got {value}")


def reader(request: pb.RecommendRequest) -> tuple[int, int]:
    """The user id and the limit of a Recommend call."""
    if request.user_id == 0:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "user_id is required: a positive integer")
    positive("user_id", request.user_id)
    return request.user_id, limit(request)


def session(request: pb.RecommendForSessionRequest) -> tuple[list[int], int]:
    """The books a visitor opened (each once, in the order first opened), and the limit, of a RecommendForSession
    call."""
    problems = []
    if not 1 <= len(request.book_ids) <= MAX_LIMIT:
        problems.append(f"book_ids must hold 1 to {MAX_LIMIT} books, got {len(request.book_ids)}")
    for i, book_id in enumerate(request.book_ids[:MAX_LIMIT]):
        problems += validation.id_problems(f"book_ids[{i}]", book_id)
    invalid(problems, written=False)
    return list(dict.fromkeys(request.book_ids)), limit(request)


def listed(request: pb.PopularBooksRequest | pb.NewBooksRequest) -> tuple[int, tuple[str, ...]]:
    """The limit and the genres of a book list call."""
    genres, problems = _genres(request.genre)
    invalid(problems, written=False)
    return limit(request), genres


def days(request: pb.PopularBooksRequest) -> int:
    chosen = request.days if request.HasField("days") else DEFAULT_DAYS
    if not 1 <= chosen <= MAX_DAYS:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"days must be between 1 and {MAX_DAYS}, got {chosen}")
    return chosen


def _genres(given: Sequence[str]) -> tuple[tuple[str, ...], list[str]]:
    """Genres asked for, and what is wrong with them."""
    problems = []
    if len(given) > MAX_FILTER_GENRES:
        problems.append(f"genre is given {len(given)} times; at most {MAX_FILTER_GENRES} are allowed")
    for i, genre in enumerate(given[:MAX_FILTER_GENRES]):
        problems += validation.text_problems(f"genre[{i}]", genre, validation.MAX_GENRE)
    return tuple(g.strip() for g in given[:MAX_FILTER_GENRES] if g.strip()), problems


@dataclass(frozen=True)
class Page:
    answer: uuid.UUID | None  # the answer (or page) it continues; None: a new answer
    offset: int  # books of the ranking (less those the answer's pages showed) skipped


def page(request: pb.RecommendRequest) -> Page:
    """The earlier answer a Recommend call continues (None: a new answer), and how many books to skip."""
    named = request.recommendation_id.strip()
    problems = validation.recommendation_id_problems("recommendation_id", named) if named else []
    offset = request.offset if request.HasField("offset") else 0
    if not 0 <= offset <= MAX_OFFSET:
        problems.append(f"offset must be between 0 and {MAX_OFFSET}, got {offset}")
    invalid(problems, written=False)
    return Page(uuid.UUID(named) if named else None, offset)


def filters(request: pb.RecommendRequest | pb.RecommendForSessionRequest) -> Filters:
    """What a Recommend call restricts its answer to, every bad field named."""
    genres, problems = _genres(request.genre)
    if len(request.exclude) > MAX_EXCLUDED:
        problems.append(f"exclude holds {len(request.exclude)} books; at most {MAX_EXCLUDED} are allowed")
    for i, book_id in enumerate(request.exclude[:MAX_EXCLUDED]):
        problems += validation.id_problems(f"exclude[{i}]", book_id)
    low = request.min_year if request.HasField("min_year") else None
    high = request.max_year if request.HasField("max_year") else None
    problems += validation.year_problems("min_year", low) + validation.year_problems("max_year", high)
    cap = request.max_per_author if request.HasField("max_per_author") else None
    if cap is not None and not 1 <= cap <= MAX_LIMIT:
        problems.append(f"max_per_author must be between 1 and {MAX_LIMIT}, got {cap}")
    invalid(problems, written=False)
    return Filters(genres, tuple(request.exclude), low, high, cap)


def limit(
    request: pb.RecommendRequest
    | pb.RecommendForSessionRequest
    | pb.SimilarBooksRequest
    | pb.UserInteractionsRequest
    | pb.PopularBooksRequest
    | pb.NewBooksRequest,
) -> int:
    chosen = request.limit if request.HasField("limit") else DEFAULT_LIMIT
    if not 1 <= chosen <= MAX_LIMIT:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"limit must be between 1 and {MAX_LIMIT}, got {chosen}")
    return chosen


def batch(name: str, size: int) -> None:
    if not 1 <= size <= MAX_BATCH:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{name} must hold 1 to {MAX_BATCH} entries, got {size}")


def version(request: pb.RollbackRequest | pb.StartCanaryRequest) -> str:
    """The version a call names, stripped ("" for none)."""
    named = request.version.strip()
    invalid(validation.version_problems("version", named), written=False)
    return named


def canary(request: pb.StartCanaryRequest, default_share: float) -> tuple[str, float]:
    """The version and the share of a StartCanary call."""
    named = request.version.strip()
    share = request.share if request.HasField("share") else default_share
    problems = validation.version_problems("version", named) + validation.share_problems("share", share)
    if not named:
        problems.insert(0, "version is required: GET /api/v1/models lists them")
    invalid(problems, written=False)
    return named, share


def abort_reason(request: pb.AbortCanaryRequest) -> str:
    invalid(validation.text_problems("reason", request.reason, MAX_REASON), written=False)
    return f"aborted by hand: {request.reason.strip()}" if request.reason.strip() else "aborted by hand"


def history_window(request: pb.OnlineHistoryRequest) -> tuple[datetime, timedelta]:
    """Where an OnlineHistory call's series start, and their buckets' width."""
    minutes = request.bucket_minutes if request.HasField("bucket_minutes") else HISTORY_BUCKET_MINUTES
    hours = request.hours if request.HasField("hours") else HISTORY_HOURS
    problems = []
    if not 1 <= minutes <= MAX_BUCKET_MINUTES:
        problems.append(f"bucket_minutes must be between 1 and {MAX_BUCKET_MINUTES}, got {minutes}")
    if not 1 <= hours <= MAX_HISTORY_HOURS:
        problems.append(f"hours must be between 1 and {MAX_HISTORY_HOURS}, got {hours}")
    invalid(problems, written=False)
    return datetime.now(UTC) - timedelta(hours=hours), timedelta(minutes=minutes)


@dataclass(frozen=True)
class NamedReads:
    """Reads recorded with interactions that name the answer that showed the book, with their entries' names."""

    names: list[str]
    reads: list[Feedback]

    @property
    def named(self) -> list[tuple[str, Feedback]]:
        return list(zip(self.names, self.reads, strict=True))


def interactions(request: pb.RecordInteractionsRequest) -> tuple[list[Interaction], NamedReads]:
    """A RecordInteractions call's interactions, and the reads of the entries that name their answer."""
    entries = request.interactions
    batch("interactions", len(entries))
    invalid([problem for i, entry in enumerate(entries) for problem in _interaction_problems(i, entry)])
    now = time.time()
    events = [
        Interaction(
            user_id=e.user_id,
            book_id=e.book_id,
            rating=e.rating if e.HasField("rating") else None,
            timestamp=validation.event_time(_seconds(e), now),
        )
        for e in entries
    ]
    named = [(i, e) for i, e in enumerate(entries) if e.HasField("recommendation_id")]
    reads = [
        Feedback(uuid.UUID(e.recommendation_id), e.book_id, "read", _moment(events[i].timestamp), e.user_id)
        for i, e in named
    ]
    return events, NamedReads([f"interactions[{i}]" for i, _ in named], reads)


def feedback(request: pb.RecordFeedbackRequest) -> NamedReads:
    """A RecordFeedback call's events, with their names."""
    entries = request.events
    batch("events", len(entries))
    invalid([problem for i, entry in enumerate(entries) for problem in _feedback_problems(i, entry)])
    now = time.time()
    events = [
        Feedback(uuid.UUID(e.recommendation_id), e.book_id, e.event, _moment(validation.event_time(_seconds(e), now)))
        for e in entries
    ]
    return NamedReads([f"events[{i}]" for i in range(len(entries))], events)


def books(request: pb.UpsertBooksRequest) -> list[tuple[Book, list[str]]]:
    """An UpsertBooks call's books, one per id, with the columns each gives."""
    entries = request.books
    batch("books", len(entries))
    invalid([problem for i, entry in enumerate(entries) for problem in _book_problems(i, entry)])
    return [_book_change(entry) for entry in _merged(entries)]


def _interaction_problems(i: int, entry: pb.InteractionInput) -> list[str]:
    name = f"interactions[{i}]"
    return [
        *validation.id_problems(f"{name}.user_id", entry.user_id),
        *validation.id_problems(f"{name}.book_id", entry.book_id),
        *validation.rating_problems(f"{name}.rating", entry.rating if entry.HasField("rating") else None),
        *validation.timestamp_problems(f"{name}.timestamp", _seconds(entry)),
        *(
            validation.recommendation_id_problems(f"{name}.recommendation_id", entry.recommendation_id)
            if entry.HasField("recommendation_id")
            else []
        ),
    ]


def _feedback_problems(i: int, entry: pb.FeedbackEvent) -> list[str]:
    name = f"events[{i}]"
    return [
        *validation.recommendation_id_problems(f"{name}.recommendation_id", entry.recommendation_id),
        *validation.id_problems(f"{name}.book_id", entry.book_id),
        *validation.event_problems(f"{name}.event", entry.event),
        *validation.timestamp_problems(f"{name}.timestamp", _seconds(entry)),
    ]


def _seconds(entry: pb.InteractionInput | pb.FeedbackEvent) -> float | None:
    return float(entry.timestamp) if entry.HasField("timestamp") else None


def _moment(timestamp: float | None) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC) if timestamp is not None else datetime.now(UTC)


def _book_problems(i: int, entry: pb.BookInput) -> list[str]:
    name = f"books[{i}]"
    problems = validation.id_problems(f"{name}.book_id", entry.book_id)
    genres: tuple[str, ...] | None = None
    if entry.HasField("genres"):
        if all(v.WhichOneof("kind") == "string_value" for v in entry.genres.values):
            genres = tuple(v.string_value for v in entry.genres.values)
        else:
            problems.append(f"{name}.genres must be an array of strings")
    return (
        problems
        + validation.book_text_problems(
            f"{name}.",
            title=entry.title if entry.HasField("title") else None,
            authors=entry.authors if entry.HasField("authors") else None,
            description=entry.description if entry.HasField("description") else None,
            genres=genres,
            published_year=entry.published_year if entry.HasField("published_year") else None,
        )
        + validation.series_problems(
            f"{name}.",
            entry.series if entry.HasField("series") else None,
            entry.series_position if entry.HasField("series_position") else None,
        )
    )


def _merged(entries: Sequence[pb.BookInput]) -> list[pb.BookInput]:
    """One entry per book: a book given twice in one call takes the fields of both, the later's where both give
    one (as two calls in a row would)."""
    merged: dict[int, pb.BookInput] = {}
    for entry in entries:
        book = merged.setdefault(entry.book_id, pb.BookInput())
        if entry.HasField("genres"):
            book.ClearField("genres")  # replaced, not appended to
        book.MergeFrom(entry)
    return list(merged.values())


def _book_change(entry: pb.BookInput) -> tuple[Book, list[str]]:
    """The book as given, and the columns it gives (the others keep their stored values)."""
    columns = ["book_id", *(name for name in ("title", "authors", "description") if entry.HasField(name))]
    if entry.HasField("genres"):
        columns.append("genres")
    if entry.HasField("published_year"):
        columns.append("published_year")
    if entry.HasField("available"):
        columns.append("available")
    if entry.HasField("series"):
        columns += ["series", "series_position"]
    book = Book(
        book_id=entry.book_id,
        title=entry.title.strip(),
        authors=entry.authors,
        description=entry.description,
        genres=tuple(v.string_value for v in entry.genres.values),
        published_year=entry.published_year if entry.HasField("published_year") else None,
        available=entry.available if entry.HasField("available") else True,
        series=entry.series.strip(),
        series_position=entry.series_position if entry.HasField("series_position") and entry.series.strip() else None,
    )
    return book, columns
