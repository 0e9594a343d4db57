"""The loops of a reader's book signals (model/signals.py), compiled by numba (model/compiled.py). A history and a
shortlist are a few hundred numbers: as NumPy calls, a request's signals were over a hundred calls of a few
microseconds each, more than the arithmetic. `reader` makes a reader's signals, `best` their answer in one call
(what `because` says of them: model/signal_sources.py). Arrays throughout: the inverted lists as CSR pointers and
indices (books to authors, authors to books, series to their volumes in order), each book's series (-1: none) and
place, a reader's books.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recommender.model.compiled import blended, compiled, stable_order
from recommender.model.ranking import TIE_BREAK
from recommender.model.scan import refined


@compiled
def _find(ordered: Any, value: int) -> int:
    """The index of `value` in the sorted `ordered` (-1: not there)."""
    low, high = 0, len(ordered)
    while low < high:
        middle = (low + high) // 2
        if ordered[middle] < value:
            low = middle + 1
        else:
            high = middle
    return low if low < len(ordered) and ordered[low] == value else -1


@compiled
def holds(ordered: Any, value: int) -> bool:
    return _find(ordered, value) >= 0


@compiled
def _counted(values: Any) -> tuple[Any, Any]:
    """The distinct `values`, sorted, and how often each comes (np.unique without its lists: a copy sorted, then
    one pass)."""
    ordered = np.sort(values)
    counts = np.zeros(len(ordered), dtype=np.int32)
    n = 0
    for value in ordered:
        if n == 0 or ordered[n - 1] != value:
            ordered[n] = value
            n += 1
        counts[n - 1] += 1
    return ordered[:n], counts[:n]


@compiled
def _unique(values: Any) -> Any:
    """The distinct `values`, sorted."""
    return _counted(values)[0]


@compiled
def reader(
    history: Any, weights: Any, book: tuple[Any, Any, Any, Any, Any, Any]
) -> tuple[Any, Any, Any, Any, Any, Any, Any]:
    """A reader's signals from their `history` (catalogue rows, in order) and its `weights` (above 0: liked): their
    distinct books (sorted), the liked ones in order, `liked_authors` and `started_series`. `book`: (author
    pointers, author codes, series, place, volume pointers, volumes)."""
    pointers, codes, series, position, volume_pointers, volumes = book
    seen = _unique(history.astype(np.int32))
    liked = history[weights > 0].astype(np.int32)
    authors, counts = liked_authors(liked, pointers, codes)
    started, furthest, following = started_series(seen, series, position, volume_pointers, volumes)
    return seen, liked, authors, counts, started, furthest, following


@compiled
def _gathered(rows: Any, pointers: Any, indices: Any, room: int) -> tuple[Any, int]:
    """The indices of CSR `rows`, row after row, in an array with `room` more places, and how many there are."""
    total = 0
    for row in rows:
        total += pointers[row + 1] - pointers[row]
    found = np.empty(total + room, dtype=np.int32)
    at = 0
    for row in rows:
        for j in range(pointers[row], pointers[row + 1]):
            found[at] = indices[j]
            at += 1
    return found, total


@compiled
def liked_authors(liked: Any, pointers: Any, codes: Any) -> tuple[Any, Any]:
    """The authors of the `liked` rows (sorted codes) and how many of those rows each wrote."""
    found, total = _gathered(liked, pointers, codes, 0)
    return _counted(found[:total])


@compiled
def started_series(seen: Any, series: Any, position: Any, pointers: Any, volumes: Any) -> tuple[Any, Any, Any]:
    """The series the reader has a volume of (sorted codes); per series the furthest place read (0 at least) and
    the row of its next volume: the first whole-numbered one after the furthest, unread (-1: none left)."""
    theirs = series[seen]
    started = _unique(theirs[theirs >= 0].astype(np.int32))
    furthest = np.zeros(len(started))
    following = np.full(len(started), -1, dtype=np.int32)
    for g in range(len(started)):
        first, last = pointers[started[g]], pointers[started[g] + 1]
        for j in range(first, last):
            if holds(seen, volumes[j]):
                furthest[g] = max(furthest[g], position[volumes[j]])
        for j in range(first, last):
            place = position[volumes[j]]
            if place == np.floor(place) and place >= 1 and place > furthest[g] and not holds(seen, volumes[j]):
                following[g] = volumes[j]
                break
    return started, furthest, following


@compiled
def candidates(
    shortlist: Any,
    authors: Any,
    counts: Any,
    most: int,
    pointers: Any,
    books: Any,
    following: Any,
    seen: Any,
    allowed: Any,
    reach: tuple[Any, float, float, Any, Any, Any],
) -> tuple[Any, Any, Any]:
    """The `shortlist` with the books the signals could raise that the answer may hold (unread, `allowed`: empty
    for all): by the reader's `most` most-read authors (ties: the lower code), and the next volumes. Sorted, and
    per row whether the signals could raise it and whether it is in the shortlist. `reach`: (product, floor,
    margin outside the shortlist, weights, series, started): a book outside the shortlist and the started series
    joins only where it `_reaches` the floor (`_floor`; -inf: every book does)."""
    product, floor, margin, weights, series, started = reach
    shortlist = _unique(shortlist.astype(np.int32))
    top = stable_order(-counts)[:most]
    raised, n = _gathered(authors[top], pointers, books, len(following))
    if floor > -np.inf:
        kept, at = 0, 0
        for a in top:
            most_added = max(weights[0], 0.0) * np.log1p(counts[a]) + max(weights[1], 0.0)
            for _ in range(pointers[authors[a]], pointers[authors[a] + 1]):
                row = raised[at]
                at += 1
                reaches = _near(product, row) + margin + most_added >= floor  # most fail here: tested first
                if reaches or holds(shortlist, row) or _group(started, series[row]) >= 0:
                    raised[kept] = row
                    kept += 1
        n = kept
    for row in following:
        if row >= 0:
            raised[n] = row
            n += 1
    keep = np.empty(n, dtype=np.bool_)
    for i in range(n):
        keep[i] = not holds(seen, raised[i]) and (len(allowed) == 0 or allowed[raised[i]])
    raised = _unique(raised[:n][keep])
    rows = _unique(np.concatenate((shortlist, raised)))
    is_raised = np.zeros(len(rows), dtype=np.bool_)
    listed = np.zeros(len(rows), dtype=np.bool_)
    for i in range(len(rows)):
        is_raised[i] = holds(raised, rows[i])
        listed[i] = holds(shortlist, rows[i])
    return rows, is_raised, listed


@compiled
def _near(product: Any, row: int) -> float:
    """The book at `row`'s exact blended score, give or take the product's margin: its value in the product
    (`product`: (values, offset, popularity)) less the query's offset and the tie-break."""
    values, offset, popularity = product
    return np.float64(values[row]) - offset - TIE_BREAK * np.float64(popularity[row])


@compiled
def _floor(shortlist: Any, product: Any, margin: float, weights: Any, depth: int, limit: int) -> float:
    """A score that `limit` of the answer's candidates surely reach: the shortlist's `depth`-th best lowest possible
    score (its `_near` less the product's `margin`), less the largest penalty its signals could give (-inf where
    the shortlist holds too few, or a weight is negative), with room for float32's rounding of the product."""
    if len(shortlist) < max(depth, limit) or weights[0] < 0 or weights[1] < 0:
        return -np.inf
    lowest = np.empty(len(shortlist))
    for i in range(len(shortlist)):
        lowest[i] = _near(product, shortlist[i]) - margin
    surely = np.sort(lowest)[-depth] - max(weights[2], 0.0)
    return surely - 1e-6 * (1.0 + abs(surely))


@compiled
def _group(started: Any, series: int) -> int:
    """The index of `series` among the `started` ones (-1: not started, or no series: started holds no -1)."""
    return _find(started, series)


@compiled
def features(
    rows: Any,
    authors: Any,
    liked_by: Any,
    started: Any,
    following: Any,
    pointers: Any,
    codes: Any,
    series: Any,
    position: Any,
) -> tuple[Any, Any, Any]:
    """Per row: log(1 + the reader's liked books by its most-read author); 1 for the next volume of a started
    series; 1 for a later volume of one than its next."""
    author = np.zeros(len(rows))
    next_volume = np.zeros(len(rows))
    held = np.zeros(len(rows))
    for i in range(len(rows)):
        author[i] = np.log1p(most_read(rows[i], authors, liked_by, pointers, codes)[1])
        next_volume[i], held[i] = continuation(rows[i], started, following, series, position)
    return author, next_volume, held


@compiled
def most_read(row: int, authors: Any, liked_by: Any, pointers: Any, codes: Any) -> tuple[int, int]:
    """Of the book at `row`'s authors, the one the reader liked most books of (the first such; -1: none) and how
    many."""
    best, most = -1, 0
    for j in range(pointers[row], pointers[row + 1]):
        at = _find(authors, codes[j])
        if at >= 0 and liked_by[at] > most:
            best, most = codes[j], liked_by[at]
    return best, most


@compiled
def continuation(row: int, started: Any, following: Any, series: Any, position: Any) -> tuple[float, float]:
    """(1 if the book at `row` is the next volume of a series the reader started, 1 if it is a later one)."""
    g = _group(started, series[row])
    if g < 0 or following[g] < 0:
        return 0.0, 0.0
    return (1.0 if following[g] == row else 0.0), (1.0 if position[row] > position[following[g]] else 0.0)


@compiled
def _in_order(rows: Any, scores: Any, started: Any, furthest: Any, series: Any, position: Any) -> tuple[Any, Any]:
    """`scores` with the unread volumes after the furthest read of each started series given their scores in series
    order (the best to the earliest place, ties to the lower row), and each row's place in such a series (0: none)."""
    scores = scores.copy()
    places = np.zeros(len(rows))
    after = np.empty(len(rows), dtype=np.int64)
    groups = np.empty(len(rows), dtype=np.int64)
    n = 0
    for i in range(len(rows)):
        g = _group(started, series[rows[i]])
        if g >= 0 and position[rows[i]] > furthest[g]:
            after[n], groups[n] = i, g
            places[i] = position[rows[i]]
            n += 1
    after, groups = after[:n], groups[:n]
    order = stable_order(rows[after])  # by series, then place, then row
    order = order[stable_order(places[after[order]])]
    order = order[stable_order(groups[order])]
    first = 0
    while first < n:
        last = first + 1
        while last < n and groups[order[last]] == groups[order[first]]:
            last += 1
        if last - first > 1:
            members = after[order[first:last]]
            scores[members] = np.sort(scores[members])[::-1]
        first = last
    return scores, places


@compiled
def reranked(
    rows: Any,
    scores: Any,
    candidates: Any,
    raised: Any,
    listed: Any,
    signals: tuple[Any, Any, Any],
    counts: tuple[int, int],
    weights: Any,
    popularity: Any,
    reader: tuple[Any, Any],
    book: tuple[Any, Any],
) -> tuple[Any, Any]:
    """The `limit` best of `rows` (exact blended `scores`, best first, as `ranking.scored` orders them): the first
    `depth` of those `listed` (the blend's shortlist) and all the signals could raise (`raised`; both per row of
    the sorted `candidates`, as are their `signals`: author, next, held), by score plus the weighed signals
    (`weights`), the unread volumes of each started series in series order; ties to the earlier volume, then the
    more popular book. Their indices among `rows`, and their scores. `counts`: (depth, limit); `reader`: (started,
    furthest); `book`: (series, place)."""
    depth, limit = counts
    started, furthest = reader
    series, position = book
    kept = np.empty(len(rows), dtype=np.int64)
    at = np.empty(len(rows), dtype=np.int64)  # each kept row's place among the candidates
    n, blend = 0, 0
    for i in range(len(rows)):
        place = _find(candidates, rows[i])
        if raised[place] or (listed[place] and blend < depth):
            kept[n], at[n] = i, place
            n += 1
        blend += 1 if listed[place] else 0
    kept, at = kept[:n], at[:n]
    mine = rows[kept]
    author, next_volume, held = signals
    boosted = scores[kept] + weights[0] * author[at] + weights[1] * next_volume[at] - weights[2] * held[at]
    boosted, places = _in_order(mine, boosted, started, furthest, series, position)
    order = stable_order(-popularity[mine])
    order = order[stable_order(places[order])]
    order = order[stable_order(-boosted[order])][:limit]
    return kept[order], boosted[order]


@compiled
def within_reach(
    rows: Any,
    raised: Any,
    listed: Any,
    near: Any,
    margin: float,
    boost: Any,
    counts: tuple[int, int],
    started: Any,
    series: Any,
) -> Any:
    """Which of the sorted candidate `rows` (`raised`, `listed` as `candidates` gives them) could be among the
    `limit` best that `reranked` chooses (`counts`: depth, limit), from `near`: each row's exact blended score give
    or take `margin` (the shortlist's product), and `boost`: what its weighed signals add. A book raised only by
    its author (outside the started series, reordered among themselves) is left out when even its highest
    possible score is below one that `limit` candidates surely reach: the `limit`-th best lowest possible score of
    the raised, or the shortlist's `depth`-th less the largest penalty (a signal moves no score but its book's; the
    series order only exchanges scores). The answer is the same."""
    depth, limit = counts
    lowest = near - margin + boost
    surely = -np.inf
    if raised.sum() >= limit:
        surely = np.sort(lowest[raised])[-limit]
    if listed.sum() >= max(depth, limit):
        surely = max(surely, np.sort(near[listed] - margin)[-depth] + np.min(boost[listed]))
    kept = np.ones(len(rows), dtype=np.bool_)
    slack = 1e-9 * (1.0 + abs(surely))  # the float64 arithmetic of the exact scores
    for i in range(len(rows)):
        if raised[i] and not listed[i] and _group(started, series[rows[i]]) < 0:
            kept[i] = near[i] + margin + boost[i] >= surely - slack
    return kept


@compiled
def best(
    shortlist: Any,
    values: Any,
    margins: tuple[float, float],
    allowed: Any,
    weights: Any,
    counts: tuple[int, int, int],
    reader: tuple[Any, Any, Any, Any, Any, Any],
    book: tuple[Any, Any, Any, Any, Any, Any],
    rows: tuple[Any, Any, Any, Any],
    query: tuple[Any, Any, Any, float, Any],
) -> tuple[Any, Any, Any, Any]:
    """A reader's answer with their book signals, in one call: of the blend's `depth` best in the `shortlist` and
    the books the signals could raise (`candidates`) that could be chosen (`within_reach`, given the shortlist's
    product `values`, give or take `margins`: in the shortlist, outside it; the candidates' own where those are
    wider, model/scan.py's `refined`), the `limit` best (`counts`: most authors, depth, limit) by exact score
    (`blended`) plus the weighed signals, series in order (`reranked`): (positions, scores, CF, content), best
    first. `reader`: (seen, authors, liked by, started, furthest, following); `book`: (author pointers, author
    codes, author's book pointers, their books, series, place); `rows`: (factors, item of book, content,
    popularity); `query`: (user, profile, parts, offset, vector)."""
    most, depth, limit = counts
    seen, authors, liked_by, started, furthest, following = reader
    pointers, codes, author_pointers, author_books, series, position = book
    factors, item_of_book, content, popularity = rows
    user, profile, parts, offset, vector = query
    product, (margin, outside) = (values, offset, popularity), margins
    floor = _floor(shortlist, product, margin, weights, depth, limit) if len(values) else -np.inf
    found, raised, listed = candidates(
        shortlist, authors, liked_by, most, author_pointers, author_books, following, seen, allowed,
        (product, floor, outside, weights, series, started),
    )  # fmt: skip
    author, next_volume, held = features(
        found, authors, liked_by, started, following, pointers, codes, series, position
    )
    if len(values):
        exact = values[found]
        if outside > margin:  # scanned: the shortlist's values are refined already, the others not
            exact[~listed] = refined(vector, rows, found[~listed])
        theirs = (exact, offset, popularity[found])
        near = np.empty(len(found))
        for i in range(len(found)):
            near[i] = _near(theirs, i)
        boost = weights[0] * author + weights[1] * next_volume - weights[2] * held
        kept = within_reach(found, raised, listed, near, margin, boost, (depth, limit), started, series)
        found, raised, listed = found[kept], raised[kept], listed[kept]
        author, next_volume, held = author[kept], next_volume[kept], held[kept]
    ordered, scores, cf, text = blended(factors, item_of_book, content, popularity, found, user, profile, parts)
    chosen, boosted = reranked(
        ordered, scores, found, raised, listed, (author, next_volume, held), (depth, limit), weights, popularity,
        (started, furthest), (series, position),
    )  # fmt: skip
    return ordered[chosen], boosted, cf[chosen], text[chosen]
