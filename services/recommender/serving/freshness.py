"""What changed in the database after the served model's snapshot, so that answers reflect it before a retrain.

Kept current by change notices (see storage/events.py), so every replica sees a write made through any of them:
- users whose history is newer than the model are answered from their current history, with CF factors folded
  in (`recommend` with `events`, model/recommend.py); their histories are cached until a notice names them;
- books added or edited since the snapshot join the served catalogue, with content vectors at once;
- what filters read of every book (its genres, year, and whether it is available: a hidden book leaves every
  answer at once), read whole at start and after missed notices, then kept current by the same changes;
- books erased since the snapshot: hidden from the moment their notice arrives (before the notice about their
  readers, so that no answer offers a book to a reader whose history has already lost it), and forgotten by the
  served model at the next sync, as are readers erased since (model/growth.py's `forgetting`: a reader's recorded
  history loses the book, an erased reader has none, and a book written again under an erased id starts anew).
  A version is `prepared` that way before it serves at all (start-up, promotion, rollback, canary).

When notices may have been missed, every user is read fresh until the changes since the model's snapshot are
known again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import Protocol

from recommender.model.answers import ReaderEvents
from recommender.model.dataset import Book
from recommender.model.filters import BookFacts, Facts
from recommender.model.growth import forgetting, with_books
from recommender.model.hybrid import HybridModel
from recommender.model.warm import warm
from recommender.storage.db import DATABASE_ERRORS
from recommender.storage.events import Event, Kind
from recommender.tasks import cancelled

log = logging.getLogger(__name__)


class Changes(Protocol):
    """What changed after a snapshot (storage/snapshot.py's SnapshotStore)."""

    async def users_changed_since(self, snapshot: str) -> list[int]: ...
    async def users_erased_since(self, snapshot: str) -> list[int]: ...
    async def books_erased_since(self, snapshot: str) -> list[int]: ...
    async def books_changed_since(self, snapshot: str) -> list[Book]: ...


class Current(Protocol):
    """What holds now (storage/catalogue.py's CatalogueStore)."""

    async def user_events(self, user_id: int) -> ReaderEvents: ...
    async def book_facts(self) -> BookFacts: ...


class FreshData:
    def __init__(self, snapshots: Changes, catalogue: Current, max_cached: int = 10_000) -> None:
        """`snapshots`: what changed since a model's snapshot; `catalogue`: a user's events now."""
        self._snapshots = snapshots
        self._catalogue = catalogue
        self._max_cached = max_cached
        self._target: HybridModel | None = None  # the model served now
        self._synced: HybridModel | None = None  # the model the state below describes
        self._extended: HybridModel | None = None  # `_synced` with the books changed since its snapshot
        self._users: set[int] = set()  # users with interactions newer than `_synced`
        self._noticed: set[int] = set()  # users named in notices since the running sync began
        self._any_user = False  # every user may be newer (notices were missed): read them all until a sync
        self._all_noticed = False  # a notice said "any user" since the running sync began
        self._cache: OrderedDict[int, ReaderEvents] = OrderedDict()
        self._epoch = 0  # bumped by every notice about interactions: a history read across one is not cached
        self._wake = asyncio.Event()
        self._syncs = (0, 0)  # syncs started, and the number of the last one finished
        self._synced_now = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._facts = BookFacts.of([])  # every book's, current
        self._facts_whole = False  # read whole since the last missed notice
        self._erased_noticed: set[int] = set()  # books erased by notices since the running sync began
        self._aligned: tuple[HybridModel, BookFacts, Facts] | None = None

    async def start(self, model: HybridModel | None) -> None:
        """Learns what changed since `model`'s snapshot, then keeps up in the background."""
        try:
            await self._read_facts()
        except Exception as exc:
            log.warning("cannot read the books' facts: %s", exc)
        if model is not None:
            self._target = model
            try:
                await self._sync(model)
            except Exception as exc:
                log.warning("cannot read the changes since model version %s: %s", model.meta.version, exc)
                self.on_reconnect()
        self._task = asyncio.create_task(self._run())

    async def stop(self, seconds: float = 2.0) -> None:
        self._stopping = True
        await cancelled(self._task, seconds)

    def on_swap(self, model: HybridModel) -> None:
        """A new model serves: learn what changed since its snapshot (in the background)."""
        if model is not self._target:
            self._target = model
            self._wake.set()

    @property
    def stale_users(self) -> int:
        """Users known to be newer than the served model (answered from their current history); -1: all may be."""
        return -1 if self._any_user else len(self._users)

    @property
    def added_books(self) -> int:
        """Books the served catalogue has beyond the model's own (added or changed since its snapshot)."""
        if self._extended is None or self._synced is None:
            return 0
        return max(self._extended.num_books - self._synced.num_books, 0) or int(self._extended is not self._synced)

    def with_new_books(self, model: HybridModel) -> HybridModel:
        """`model` with the books added or changed since its snapshot (once they are known)."""
        if model is self._synced and self._extended is not None:
            return self._extended
        return model

    def facts(self, model: HybridModel) -> Facts:
        """The books' facts over `model`'s catalogue (aligned once per model and change)."""
        aligned = self._aligned
        if aligned is None or aligned[0] is not model or aligned[1] is not self._facts:
            aligned = (model, self._facts, self._facts.over(model.catalogue.book_ids))
            self._aligned = aligned
        return aligned[2]

    async def _read_facts(self) -> None:
        self._facts = await self._catalogue.book_facts()
        self._facts_whole = True

    async def newer_events(self, model: HybridModel, user_id: int) -> ReaderEvents | None:
        """The user's whole current history when the model's record of them may be out of date, else None. For a
        model other than the one served (a canary), always the current history: only the served model's changes
        are followed, and model/readers.py's `reader_of` keeps the trained factors when nothing changed."""
        known = model.cf.user_row(user_id) is not None and user_id not in model.forgotten_users
        followed = model is self._target or model is self._synced or model is self._extended
        if known and followed and not self._any_user and user_id not in self._users:
            return None  # (between a swap and its sync, the users of the last sync and of the notices since)
        cached = self._cache.get(user_id)
        if cached is not None:
            self._cache.move_to_end(user_id)
            return cached
        epoch = self._epoch
        history = await self._catalogue.user_events(user_id)
        if epoch == self._epoch:
            self._cache[user_id] = history
            if len(self._cache) > self._max_cached:
                self._cache.popitem(last=False)
        return history

    async def prepared(self, model: HybridModel) -> HybridModel:
        """`model` without what it learned of the readers and books erased since its snapshot, before it serves
        (VersionManager's `prepare`); as it is when the database cannot say (its sync will)."""
        if not model.meta.snapshot:
            return model
        try:
            books = await self._snapshots.books_erased_since(model.meta.snapshot)
            users = await self._snapshots.users_erased_since(model.meta.snapshot)
        except DATABASE_ERRORS as exc:
            log.warning("cannot read the erasures since version %s's snapshot: %s", model.meta.version, exc)
            return model
        return await asyncio.to_thread(_with_books, model, [], books, users)

    async def books_changed(self, wait_seconds: float = 5.0) -> None:
        """Books were just written through this process: returns once the served catalogue has them."""
        if self._target is None:
            return
        wanted = self._syncs[0] + 1
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_seconds), self._synced_now:
                await self._synced_now.wait_for(lambda: self._syncs[1] >= wanted)

    def on_event(self, event: Event) -> None:
        if event.kind is Kind.INTERACTIONS:
            self._epoch += 1
            if not event.ids:  # too many to name
                self.on_reconnect()
                return
            self._users.update(event.ids)
            self._noticed.update(event.ids)
            for user_id in event.ids:
                self._cache.pop(user_id, None)
        elif event.kind is Kind.ERASED_BOOKS:
            self._facts = self._facts.hiding(event.ids)  # at once: the notice about their readers comes next
            self._erased_noticed.update(event.ids)
            self._wake.set()
        elif event.kind is Kind.BOOKS:
            self._wake.set()

    def on_reconnect(self) -> None:
        """Notices may have been missed: read every user fresh until the next sync."""
        self._epoch += 1
        self._any_user = self._all_noticed = True
        self._facts_whole = False
        self._cache.clear()
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            model = self._target
            if model is None:
                continue
            try:
                await self._sync(model)
            except Exception as exc:  # the database may be away: answer from what is known, try again soon
                log.warning("cannot read the changes since model version %s: %s", model.meta.version, exc)
                await asyncio.sleep(1.0)
                self._wake.set()

    async def _sync(self, model: HybridModel) -> None:
        number = self._syncs[0] + 1
        self._syncs = (number, self._syncs[1])
        self._noticed, self._all_noticed = set(), False
        self._erased_noticed = set()
        snapshot = model.meta.snapshot
        users: list[int] = []
        books: list[Book] = []
        erased: list[int] = []
        erased_users: list[int] = []
        if not snapshot:  # a model that does not say what its data includes: everyone may be newer
            self._noticed, self._all_noticed = set(), True
        else:  # exactly the rows its snapshot does not see: none at all right after a retrain
            users = await self._snapshots.users_changed_since(snapshot)
            erased_users = await self._snapshots.users_erased_since(snapshot)
            erased = await self._snapshots.books_erased_since(snapshot)
            books = await self._snapshots.books_changed_since(snapshot)  # after: a book written again is a book
        if not self._facts_whole or not snapshot:
            await self._read_facts()
        else:  # (erased, then written again: a book again)
            self._facts = self._facts.hiding(erased).with_books(books)
        self._facts = self._facts.hiding(sorted(self._erased_noticed))  # erased while this sync read
        extended = await asyncio.to_thread(_with_books, model, books, erased, erased_users)
        if model is not self._target:
            return  # another model took over meanwhile: its own sync follows
        self._synced, self._extended = model, extended
        self._users = set(users) | self._noticed
        self._any_user = self._all_noticed
        self._cache.clear()
        self._syncs = (self._syncs[0], number)
        async with self._synced_now:
            self._synced_now.notify_all()
        if extended is not model:
            log.info(
                "serving version %s with the changes since its snapshot: %d books in the catalogue, %d of them "
                "erased since (forgotten)",
                model.meta.version,
                extended.num_books,
                len(extended.forgotten),
            )


def _with_books(model: HybridModel, books: list[Book], erased: list[int], erased_users: list[int]) -> HybridModel:
    """`model` with `books` and without what it learned of the `erased` books and users, warmed like any model
    before it serves (its caches are its own)."""
    extended = forgetting(with_books(model, books), erased, erased_users)
    if extended is not model:
        warm(extended)
    return extended
