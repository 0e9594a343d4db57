"""The record of answers: an answer's life in one place. Recorded when it is shown (queued here and written off
the request's path: answers/queue.py), looked up (written, or still queued in this process), continued by a next
page, and credited with the feedback that names it (the attribution rules of storage/feedback.py). The online
figures that roll it up are read through answers/view.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg

from recommender.answers.queue import FLUSH_SECONDS, ImpressionLog
from recommender.storage.feedback import Feedback, Impression, OnlineStore, attribution_problem


class UnknownAnswer(LookupError):
    """No recorded answer has this id."""


class AnswersRecord:
    def __init__(self, store: OnlineStore, queue: ImpressionLog | None) -> None:
        """`queue`: where shown answers wait to be written (None: answers are not recorded)."""
        self._store = store
        self._queue = queue

    @property
    def attribution_window(self) -> timedelta:
        return self._store.attribution_window

    def record(self, user_id: int, version: str, books: Sequence[int], continues: uuid.UUID | None = None) -> uuid.UUID:
        """A new answer's id; the answer (a later page: of the answer it `continues`) recorded as an impression
        when answers are recorded and it shows any book."""
        recommendation_id = uuid.uuid4()
        if self._queue is not None and books:
            shown = Impression(recommendation_id, user_id, version, list(books), datetime.now(UTC), continues)
            self._queue.record(shown)
        return recommendation_id

    async def known(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Impression]:
        """The answers of `ids` known here: written, or shown by this process and still queued."""
        known = await self._store.shown(ids)
        if self._queue is not None:
            known |= self._queue.unwritten(ids)
        return known

    async def first_page(self, answer: uuid.UUID) -> Impression:
        """The first page of the answer `answer` belongs to (another replica's answer is written within half a
        second: waited for that long); UnknownAnswer when none is recorded."""
        for attempt in range(3):
            known = await self.known([answer])
            if answer in known:
                shown = known[answer]
                return shown if shown.continues is None else await self.first_page(shown.continues)
            if attempt < 2:
                await asyncio.sleep(FLUSH_SECONDS)
        raise UnknownAnswer(f"no recorded answer has recommendation_id {answer}")

    async def shown_by(self, first: Impression) -> set[int]:
        """Every book the answer `first` and its later pages showed."""
        pages = await self._store.pages_of(first.recommendation_id)
        if self._queue is not None:
            pages += self._queue.unwritten_pages(first.recommendation_id)
        return {book for page in (first, *pages) for book in page.books}

    async def problems(self, reads: Sequence[tuple[str, Feedback]]) -> list[str]:
        """ "name: why" for each event that cannot count for the answer it names, judged now for the answers known
        here; an answer not known yet (another replica's, still queued) is judged by the same rules when the
        online figures are summed."""
        if not reads:
            return []
        shown = await self.known([event.recommendation_id for _name, event in reads])
        window = self._store.attribution_window
        return [
            f"{name}: {problem}"
            for name, event in reads
            if (answer := shown.get(event.recommendation_id)) is not None
            and (problem := attribution_problem(event, answer, window))
        ]

    async def add_feedback(self, reads: Sequence[Feedback]) -> None:
        await self._store.add_feedback(reads)

    @staticmethod
    def feedback_writer(reads: Sequence[Feedback]) -> Callable[[asyncpg.Connection], Awaitable[None]]:
        """The writes of `reads`, for another write's transaction."""
        return OnlineStore.feedback_writer(reads)
