"""A version grown without a refit: books added to its catalogue or changed in it, erased books and users
forgotten, an index of its catalogue built. Each returns a new version; the one it was made from serves on."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from recommender.model.catalogue import grown
from recommender.model.dataset import Book
from recommender.model.hybrid import HybridModel
from recommender.model.index import build
from recommender.model.params import IndexParams


def with_books(model: HybridModel, books: Sequence[Book]) -> HybridModel:
    """The version with `books` added to the catalogue or updated in it: content vectors from the version's text
    encoder (zero for versions without one), no CF factors until a retrain."""
    found = grown(model.catalogue, model.content, books)
    if found is None:
        return model
    catalogue, merged, incoming = found
    changed_ids = np.union1d(model.changed_since_index, incoming).astype(np.int32)
    return HybridModel.assemble(
        model.meta, catalogue, model.cf, merged, model.index, changed_ids, model.forgotten, model.forgotten_users,
        model.ranker,
    )  # fmt: skip


def forgetting(model: HybridModel, book_ids: Sequence[int], user_ids: Sequence[int] = ()) -> HybridModel:
    """The version without what it learned of `book_ids` and `user_ids` (erased after its snapshot). A book: no CF
    factors and no popularity of its own, and no place in any reader's recorded history (such a reader's factors are
    folded in again from the rest); one written again under its id starts anew, from its text alone. A user: no
    recorded history (a stranger, until their events say otherwise)."""
    users = model.forgotten_users | {u for u in user_ids if model.cf.user_row(u) is not None}
    catalogue = model.catalogue
    known = catalogue.book_ids[catalogue.positions(np.unique(np.asarray(book_ids, dtype=np.int64)))]
    ids = np.union1d(model.forgotten, known).astype(np.int32)
    if len(ids) == len(model.forgotten) and users == model.forgotten_users:
        return model
    changed = np.union1d(model.changed_since_index, ids).astype(np.int32)  # the index's rows of theirs are stale
    return HybridModel.assemble(
        model.meta, catalogue, model.cf, model.content, model.index, changed, ids, users, model.ranker
    )


def with_index(model: HybridModel, params: IndexParams) -> HybridModel:
    """The version with an index of its catalogue when the catalogue has `params.min_books` books or more."""
    if model.num_books < params.min_books:
        return model
    meta = dataclasses.replace(model.meta, params=dataclasses.replace(model.meta.params, index=params))
    index = build(model.catalogue.book_ids, model.rows, model.similar_rows.item_factors, params)
    return dataclasses.replace(model, meta=meta, index=index)
