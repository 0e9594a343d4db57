""" "Because you read": for each recommended book, the reader's own books it comes from most."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from recommender.model.ranking import IntArray, Query

if TYPE_CHECKING:
    from recommender.model.hybrid import HybridModel, Reader, Reason

SHOWN = 3  # reasons per book


def explained(model: HybridModel, positions: IntArray, reader: Reader, q: Query) -> list[tuple[Reason, ...]] | None:
    """For each recommended book (at catalogue `positions`), the reader's books it comes from most: what each liked
    book gives its score through CF (implicit's explanation of ALS, in the z-score's units and the blend's weight)
    and through content (its share of the profile's cosine similarity, likewise), the larger part named. None for a
    reader who liked nothing. Computed for the returned books only."""
    from recommender.model.hybrid import Reason

    liked = reader.weights > 0
    mine, my_weights = reader.seen[liked], reader.weights[liked]
    if len(mine) == 0 or len(positions) == 0:
        return None
    norm = float(np.linalg.norm(model.content.profile(mine, my_weights))) or 1.0
    content = model.content.vectors[positions] @ model.content.vectors[mine].T
    content *= my_weights * np.float32(q.content.scale / norm)
    cf = np.zeros_like(content)
    items, target_items = model.rows.item_of_book[mine], model.rows.item_of_book[positions]
    known, reachable = items >= 0, target_items >= 0
    if q.cf.weight > 0 and known.any() and reachable.any():
        given = model.cf.explain(items[known], my_weights[known], target_items[reachable])
        cf[np.ix_(reachable, known)] = given * np.float32(q.cf.scale)
    total = np.maximum(cf, 0.0) + np.maximum(content, 0.0)
    wholes = total.sum(axis=1, keepdims=True)
    best = np.argsort(-total, axis=1, kind="stable")[:, :SHOWN]
    rows = np.arange(len(positions))[:, None]
    shares = (total[rows, best] / np.where(wholes > 0, wholes, 1.0)).tolist()
    parts = np.where(cf[rows, best] >= content[rows, best], "cf", "content").tolist()
    sources = mine[best]
    ids, rows_of, titles = model.catalogue.book_ids[sources].tolist(), sources.tolist(), model.catalogue.titles
    return [
        tuple(
            Reason(book_id, titles[source], part, share)
            for book_id, source, part, share in zip(ids[row], rows_of[row], parts[row], shares[row], strict=True)
            if share > 0
        )
        for row in range(len(positions))
    ]
