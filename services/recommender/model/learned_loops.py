"""The learned stage's loops (model/learned.py), compiled by numba: a reader's candidates and their features in one
call, and the answer from them, the trees' scores and the series order in one more. One call each because a
request's candidates are a few dozen: the fixed cost of a call, a few microseconds for each array it is handed,
outweighed the arithmetic of the five calls this was."""

from __future__ import annotations

from typing import Any

import numpy as np

from recommender.model.compiled import blended, compiled, stable_order
from recommender.model.signal_loops import candidates, features, holds, reranked
from recommender.model.trees import forest

# What the trees read of each candidate, in this order.
FEATURES = (
    "blended score", "CF part", "content part", "popularity", "author", "next volume", "later volume",
    "place in the blend's order", "in a series the reader started", "place in its series", "reader's books",
    "authors of the book",
)  # fmt: skip
WIDTH = len(FEATURES)


@compiled
def candidate_values(
    shortlist: Any,
    allowed: Any,
    counts: tuple[int, int, int],
    reader: tuple[Any, Any, Any, Any, Any],
    book: tuple[Any, Any, Any, Any, Any, Any],
    rows: tuple[Any, Any, Any, Any],
    query: tuple[Any, Any, Any],
) -> tuple[Any, Any, Any, Any, Any, Any, Any, Any, tuple[Any, Any, Any]]:
    """The blend's `depth` best among the `shortlist` rows (which must hold them) and the books the reader's signals
    gather (the books of their `authors` most-read authors, the next volumes; at most `most` of them, the next
    volumes first, then the most popular) that the answer may hold (`allowed`: empty for all), in the order of their
    exact blended scores: (rows, features, scores, CF parts, content parts) and, per row of every one considered
    (sorted), whether the signals raised it, whether the shortlist listed it, and its signals (author, next, held).
    `counts`: (authors, depth, most); `reader`: (seen, authors, liked by, started, following); `book`: (author
    pointers, author codes, author's book pointers, their books, series, place); `rows`: (factors, item of book,
    content, popularity); `query`: (user, profile, parts)."""
    most_authors, depth, most = counts
    seen, authors, liked_by, started, following = reader
    pointers, codes, author_pointers, author_books, series, position = book
    factors, item_of_book, content, popularity = rows
    unbounded = ((np.zeros(0, dtype=np.float32), 0.0, popularity), -np.inf, 0.0, np.ones(3), series, started)
    found, raised, listed = candidates(
        shortlist, authors, liked_by, most_authors, author_pointers, author_books, following, seen, allowed, unbounded
    )
    author, next_volume, held = features(
        found, authors, liked_by, started, following, pointers, codes, series, position
    )
    if raised.sum() > most:  # whether the shortlist lists them or not: the same whatever its depth
        raised &= _most_popular(found, raised, next_volume > 0, popularity, most)
        kept = raised | listed
        found, raised, listed = found[kept], raised[kept], listed[kept]
        author, next_volume, held = author[kept], next_volume[kept], held[kept]
    user, profile, parts = query
    ordered, scores, cf, text = blended(factors, item_of_book, content, popularity, found, user, profile, parts)
    kept, values = _values(
        ordered, scores, cf, text, (found, raised, listed), (author, next_volume, held), depth,
        (popularity, series, position, pointers), (started, len(seen)),
    )  # fmt: skip
    return (
        ordered[kept],
        values,
        scores[kept],
        cf[kept],
        text[kept],
        found,
        raised,
        listed,
        (author, next_volume, held),
    )


@compiled
def best(
    shortlist: Any,
    allowed: Any,
    counts: tuple[int, int, int, int],
    reader: tuple[Any, Any, Any, Any, Any, Any],
    book: tuple[Any, Any, Any, Any, Any, Any],
    rows: tuple[Any, Any, Any, Any],
    query: tuple[Any, Any, Any],
    trees: tuple[Any, Any, Any, Any, Any, Any],
) -> tuple[Any, Any, Any, Any]:
    """The `limit` best of the reader's `candidate_values` by the `trees`' scores (model/trees.py's `Layout.arrays`),
    the unread volumes of each series the reader started in order (`reranked`; ties: the earlier volume, then the
    more popular book): (positions, scores, CF, content), best first. `counts`: (authors, depth, most, limit);
    `reader`: (seen, authors, liked by, started, furthest, following); the rest as `candidate_values` reads them."""
    most_authors, depth, most, limit = counts
    seen, authors, liked_by, started, furthest, following = reader
    series, position, popularity = book[4], book[5], rows[3]
    ordered, values, _scores, cf, text, found, raised, listed, signals = candidate_values(
        shortlist, allowed, (most_authors, depth, most), (seen, authors, liked_by, started, following), book, rows,
        query,
    )  # fmt: skip
    chosen, scores = reranked(
        ordered, forest(values, trees), found, raised, listed, signals, (len(ordered), limit), np.zeros(3),
        popularity, (started, furthest), (series, position),
    )  # fmt: skip
    return ordered[chosen], scores, cf[chosen], text[chosen]


@compiled
def _most_popular(found: Any, raised: Any, first: Any, popularity: Any, most: int) -> Any:
    """Of the `found` rows (sorted) the signals `raised`, those `first` marks and then the most popular others
    (ties: the lower row), `most` in all."""
    keep = raised & first
    others = np.flatnonzero(raised & ~first)
    room = max(most - int(keep.sum()), 0)
    order = stable_order(-popularity[found[others]].astype(np.float64))  # `found` is sorted: ties to the lower row
    keep[others[order[:room]]] = True
    return keep


@compiled
def _values(
    ordered: Any,
    scores: Any,
    cf: Any,
    text: Any,
    sorted_rows: tuple[Any, Any, Any],
    signals: tuple[Any, Any, Any],
    depth: int,
    book: tuple[Any, Any, Any, Any],
    reader: tuple[Any, int],
) -> tuple[Any, Any]:
    """Of the `ordered` rows (by their blended `scores`, with its `cf` and `text` parts), those kept (every one the
    signals raised, the first `depth` of the blend's shortlist): their indices and their features. Per row of the
    `sorted_rows` (found, raised, listed), its `signals` (author, next, held). `book`: (popularity, series, place,
    author pointers); `reader`: (started series, books read)."""
    found, raised, listed = sorted_rows
    popularity, series, position, pointers = book
    started, read = reader
    kept = np.empty(len(ordered), dtype=np.int64)
    at = np.empty(len(ordered), dtype=np.int64)
    n, blend = 0, 0
    for i in range(len(ordered)):
        place = np.searchsorted(found, ordered[i])
        if raised[place] or (listed[place] and blend < depth):
            kept[n], at[n] = i, place
            n += 1
        blend += 1 if listed[place] else 0
    values = np.empty((n, WIDTH))
    for j in range(n):
        i, place, row = kept[j], at[j], ordered[kept[j]]
        values[j, 0], values[j, 1], values[j, 2], values[j, 3] = scores[i], cf[i], text[i], popularity[row]
        values[j, 4], values[j, 5], values[j, 6] = signals[0][place], signals[1][place], signals[2][place]
        values[j, 7] = j
        values[j, 8] = 1.0 if series[row] >= 0 and holds(started, series[row]) else 0.0
        values[j, 9] = 0.0 if np.isnan(position[row]) else position[row]
        values[j, 10], values[j, 11] = read, pointers[row + 1] - pointers[row]
    return kept[:n], values
