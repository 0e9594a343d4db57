""" "Because you read": for each recommended book, the reader's own books it comes from most."""

from __future__ import annotations

import numpy as np

from recommender.model.answers import Reader, Reason
from recommender.model.catalogue import Catalogue
from recommender.model.cf import CFModel
from recommender.model.content import ContentModel
from recommender.model.ranking import BookRows, IntArray, Query

SHOWN = 3  # reasons per book


def explained(
    catalogue: Catalogue,
    content: ContentModel,
    rows: BookRows,
    cf: CFModel,
    positions: IntArray,
    reader: Reader,
    q: Query,
) -> list[tuple[Reason, ...]] | None:
    """For each recommended book (at catalogue `positions`), the reader's books it comes from most: what each liked
    book gives its score through CF (implicit's explanation of ALS, in the z-score's units and the blend's weight)
    and through content (its share of the profile's cosine similarity, likewise), the larger part named. None for a
    reader who liked nothing. Computed for the returned books only (a version's catalogue, content model, rows and
    CF model: model/hybrid.py)."""
    liked = reader.weights > 0
    mine, my_weights = reader.seen[liked], reader.weights[liked]
    if len(mine) == 0 or len(positions) == 0:
        return None
    norm = float(np.linalg.norm(content.profile(mine, my_weights))) or 1.0
    by_content = content.vectors[positions] @ content.vectors[mine].T
    by_content *= my_weights * np.float32(q.content.scale / norm)
    by_cf = np.zeros_like(by_content)
    items, target_items = rows.item_of_book[mine], rows.item_of_book[positions]
    known, reachable = items >= 0, target_items >= 0
    if q.cf.weight > 0 and known.any() and reachable.any():
        given = cf.explain(items[known], my_weights[known], target_items[reachable])
        by_cf[np.ix_(reachable, known)] = given * np.float32(q.cf.scale)
    total = np.maximum(by_cf, 0.0) + np.maximum(by_content, 0.0)
    wholes = total.sum(axis=1, keepdims=True)
    best = np.argsort(-total, axis=1, kind="stable")[:, :SHOWN]
    at = np.arange(len(positions))[:, None]
    shares = (total[at, best] / np.where(wholes > 0, wholes, 1.0)).tolist()
    parts = np.where(by_cf[at, best] >= by_content[at, best], "cf", "content").tolist()
    sources = mine[best]
    ids, rows_of, titles = catalogue.book_ids[sources].tolist(), sources.tolist(), catalogue.titles
    return [
        tuple(
            Reason(book_id, titles[source], part, share)
            for book_id, source, part, share in zip(ids[row], rows_of[row], parts[row], shares[row], strict=True)
            if share > 0
        )
        for row in range(len(positions))
    ]
