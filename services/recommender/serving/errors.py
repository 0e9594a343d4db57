"""What a refused call answers: one table from the service's own errors to gRPC status codes, applied to every
handler by one decorator, so that handlers only say what they do. Envoy turns the codes into HTTP statuses (400,
404, 409, 503...) and the gateway's Lua filter the messages into {"detail": ...}."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar, cast

import grpc

from recommender.answers.record import UnknownAnswer
from recommender.serving.policy import VersionNotFound, VersionUnavailable
from recommender.storage.db import DATABASE_ERRORS, CommitUncertain
from recommender.storage.registry import ActiveChanged, NoCanary

SHOWN_PROBLEMS = 20  # bad entries named in one message


class Refused(Exception):
    """A call refused with `code`, saying why in words a user can act on."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(problems: list[str], written: bool = True) -> None:
    """Raises INVALID_ARGUMENT naming the bad entries, when there are any (`written`: the call writes, and the
    message says that nothing of it was)."""
    refuse(grpc.StatusCode.INVALID_ARGUMENT, problems, "nothing written: " if written else "")


def refuse(code: grpc.StatusCode, problems: list[str], prefix: str = "") -> None:
    """Raises Refused(`code`) naming the first SHOWN_PROBLEMS of `problems`, when there are any."""
    if problems:
        shown = "; ".join(problems[:SHOWN_PROBLEMS])
        more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
        raise Refused(code, f"{prefix}{shown}{more}")


def listed_ids(book_ids: list[int], most: int = 20) -> str:
    """The first `most` ids, and how many more."""
    return ", ".join(map(str, book_ids[:most])) + (f" and {len(book_ids) - most} more" if len(book_ids) > most else "")


def naming(name: str, entries: Sequence[Any], book_ids: Sequence[int], why: str = "") -> list[str]:
    """ "name[i]: book B is not in the catalogue" for each entry naming one of `book_ids`."""
    missing, then = set(book_ids), f": {why}" if why else ""
    return [
        f"{name}[{i}]: book {e.book_id} is not in the catalogue{then}"
        for i, e in enumerate(entries)
        if e.book_id in missing
    ]


# The service's own errors; their text is the message.
STATUS: dict[type[Exception], grpc.StatusCode] = {
    VersionNotFound: grpc.StatusCode.NOT_FOUND,
    UnknownAnswer: grpc.StatusCode.NOT_FOUND,
    VersionUnavailable: grpc.StatusCode.FAILED_PRECONDITION,  # the gateway answers 409: its state forbids it
    NoCanary: grpc.StatusCode.ABORTED,
    ActiveChanged: grpc.StatusCode.ABORTED,
    CommitUncertain: grpc.StatusCode.UNAVAILABLE,  # "may have landed"
}


class Handler(Protocol):
    """What every handler's servicer has: the database's words for a failure that names it."""

    def unreachable(self, exc: BaseException) -> str: ...


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def answers(unavailable: str) -> Callable[[F], F]:
    """A handler whose refusals become statuses: Refused as it says, the errors of STATUS by the table, and a
    database that cannot be reached UNAVAILABLE, `unavailable` saying what did not happen ("nothing recorded")."""

    def decorate(handler: F) -> F:
        @functools.wraps(handler)
        async def answered(self: Handler, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await handler(self, request, context)
            except Refused as exc:
                await context.abort(exc.code, exc.message)
            except tuple(STATUS) as exc:
                await context.abort(STATUS[_kind(exc)], str(exc))
            except DATABASE_ERRORS as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"{unavailable}: {self.unreachable(exc)}")

        return cast(F, answered)

    return decorate


def _kind(exc: Exception) -> type[Exception]:
    return next(kind for kind in type(exc).__mro__ if kind in STATUS)
