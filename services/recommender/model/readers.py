"""A reader as a version knows them: the history it was trained on or, when newer events are given, that history
with CF factors folded in from it (model/cf.py's `fold_in`)."""

from __future__ import annotations

import numpy as np

from recommender.model.answers import Reader, ReaderEvents
from recommender.model.cf import FloatArray, IntArray, interaction_weights
from recommender.model.hybrid import HybridModel


def reader_of(model: HybridModel, user_id: int, events: ReaderEvents | None = None) -> Reader:
    """The version's record of the user; or, when given, `events` (everything the user did, newer than the
    version), with CF factors folded in from it."""
    if events is None:
        return _recorded(model, user_id)
    ratings = dict(events)
    seen = model.catalogue.positions([book_id for book_id, _ in events])
    rated = [ratings[int(model.catalogue.book_ids[p])] for p in seen]
    weights = interaction_weights([np.nan if r is None else r for r in rated], model.cf.params.rating_scale)
    recorded = _recorded(model, user_id)
    if recorded.cf_row is not None and _same_history(recorded, seen, weights):
        return recorded  # nothing new after all: the trained factors, not a refit of them
    return Reader(None, seen, weights, fold_in(model, seen, weights))


def fold_in(model: HybridModel, positions: IntArray, weights: FloatArray) -> FloatArray | None:
    """CF factors for a history of catalogue `positions` (see `CFModel.fold_in`); None when CF knows none of the
    books."""
    items = model.item_of_position[positions]
    known = items >= 0
    return model.cf.fold_in(items[known], weights[known])


def _recorded(model: HybridModel, user_id: int) -> Reader:
    row = None if user_id in model.forgotten_users else model.cf.user_row(user_id)
    if row is None:
        return Reader(None, np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32))
    item_positions, weights = model.cf.interactions(row)
    seen = model.cf_positions[item_positions]
    kept = model.item_of_position[seen] >= 0  # (a recorded book without an item: forgotten)
    if not kept.all():
        return Reader(None, seen[kept], weights[kept], fold_in(model, seen[kept], weights[kept]))
    return Reader(row, seen, weights)


def _same_history(history: Reader, seen: IntArray, weights: FloatArray) -> bool:
    if len(history.seen) != len(seen):
        return False
    mine, theirs = np.argsort(history.seen), np.argsort(seen)
    return bool(
        np.array_equal(history.seen[mine], seen[theirs]) and np.allclose(history.weights[mine], weights[theirs])
    )
