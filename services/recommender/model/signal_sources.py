"""What `because` says of a reader's book signals, compiled like the signals' own loops (model/signal_loops.py):
per recommended book, the signals and the reader's books behind them."""

from __future__ import annotations

from typing import Any

import numpy as np

from recommender.model.compiled import compiled
from recommender.model.signal_loops import continuation, holds, most_read


@compiled
def sources(
    rows: Any,
    liked: Any,
    seen: Any,
    reader: tuple[Any, Any, Any, Any],
    book: tuple[Any, Any, Any, Any],
    volume_pointers: Any,
    volumes: Any,
) -> tuple[Any, Any, Any, Any, Any, Any]:
    """Per row, its author and next signals (as `features` gives them) and the reader's books behind them: its
    most-read author (`most_read`), how many, and the first of the reader's `liked` rows by them; the furthest
    volume the reader read of its series (the first of equal places; -1: not its next volume). `reader`:
    (authors, liked by, started, following); `book`: (author pointers, author codes, series, place)."""
    authors, liked_by, started, following = reader
    pointers, codes, series, position = book
    author = np.zeros(len(rows))
    next_volume = np.zeros(len(rows))
    best = np.full(len(rows), -1, dtype=np.int32)
    count = np.zeros(len(rows), dtype=np.int32)
    by = np.full(len(rows), -1, dtype=np.int32)
    read = np.full(len(rows), -1, dtype=np.int32)
    for i in range(len(rows)):
        best[i], count[i] = most_read(rows[i], authors, liked_by, pointers, codes)
        author[i] = np.log1p(count[i])
        next_volume[i] = continuation(rows[i], started, following, series, position)[0]
        by[i] = _first_by(best[i], liked, pointers, codes)
        if next_volume[i] > 0:
            read[i] = _furthest_read(series[rows[i]], seen, volume_pointers, volumes, position)
    return author, next_volume, best, count, by, read


@compiled
def _first_by(author: int, liked: Any, pointers: Any, codes: Any) -> int:
    """The first of the `liked` rows whose authors include `author` (-1: none)."""
    if author < 0:
        return -1
    for mine in liked:
        for j in range(pointers[mine], pointers[mine + 1]):
            if codes[j] == author:
                return mine
    return -1


@compiled
def _furthest_read(series: int, seen: Any, pointers: Any, volumes: Any, position: Any) -> int:
    """The row of the furthest volume of `series` the reader read (the first of equal places; -1: none)."""
    found, furthest = -1, -np.inf
    for j in range(pointers[series], pointers[series + 1]):
        if holds(seen, volumes[j]) and position[volumes[j]] > furthest:
            found, furthest = volumes[j], position[volumes[j]]
    return found
