""" "Because you read": for each recommended book, the reader's own books it comes from most, and what their book
signals say of it (an author they came back to, the next volume of a series)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from recommender.model.answers import Reader, Reason
from recommender.model.catalogue import Catalogue
from recommender.model.cf import CFModel, FloatArray
from recommender.model.content import ContentModel
from recommender.model.explain_loops import blend_reasons, cf_gifts
from recommender.model.params import SignalWeights
from recommender.model.ranking import BookRows, IntArray, Query
from recommender.model.signals import BookSignals, ReaderSignals

SHOWN = 3  # reasons per book


def explained(
    catalogue: Catalogue,
    content: ContentModel,
    rows: BookRows,
    cf: CFModel,
    positions: IntArray,
    reader: Reader,
    q: Query,
    room: Sequence[int] = (),
) -> list[tuple[Reason, ...]] | None:
    """For each recommended book (at catalogue `positions`), the reader's books it comes from most: what each liked
    book gives its score through CF (implicit's explanation of ALS, in the z-score's units and the blend's weight)
    and through content (its share of the profile's cosine similarity, likewise), the larger part named. None for a
    reader who liked nothing. Computed for the returned books only (a version's catalogue, content model, rows and
    CF model: model/hybrid.py). `room[i]`: at most so many for book i (SHOWN when not given)."""
    liked = reader.weights > 0
    mine, my_weights = reader.seen[liked], reader.weights[liked]
    if len(mine) == 0 or len(positions) == 0:
        return None
    by_cf = _cf_gifts(rows, cf, positions, mine, my_weights, q)
    best, shares, by = blend_reasons(positions, mine, my_weights, content.vectors, q.content.scale, by_cf, SHOWN)
    sources = mine[best]
    ids, rows_of, parts, shown = catalogue.book_ids[sources].tolist(), sources.tolist(), by.tolist(), shares.tolist()
    limits = room or [SHOWN] * len(ids)
    return [
        _reasons(catalogue.titles, book_ids, books, by_cf, book_shares, n)
        for book_ids, books, by_cf, book_shares, n in zip(ids, rows_of, parts, shown, limits, strict=True)
    ]


_PARTS = ("content", "cf")  # by whether CF gave the larger part


def _reasons(
    titles: Sequence[str], ids: list[int], rows: list[int], by_cf: list[bool], shares: list[float], room: int
) -> tuple[Reason, ...]:
    """A book's reasons, its shares best first: those above 0 (they lead), at most `room`. Each is made by
    tuple.__new__ itself: NamedTuple's own __new__ is a Python call, a third of this loop's time."""
    return tuple([
        tuple.__new__(Reason, (book_id, titles[row], _PARTS[cf], share, ""))
        for book_id, row, cf, share in zip(ids[:room], rows[:room], by_cf[:room], shares[:room], strict=True)
        if share > 0
    ])  # fmt: skip


def _cf_gifts(
    rows: BookRows, cf: CFModel, positions: IntArray, mine: IntArray, weights: FloatArray, q: Query
) -> FloatArray:
    """What each of the reader's books gives each recommended book through CF (books x mine), in the blend's units:
    one compiled call, but for a history shorter than the factors of a version too large to keep its whitened
    factors."""
    items = rows.item_of_book[mine]
    known = items >= 0
    if q.cf.weight <= 0 or not known.any():
        return np.zeros((len(positions), len(mine)), dtype=np.float32)
    if cf.keeps_whitened or int(known.sum()) >= cf.item_factors.shape[1]:
        solve = (cf.whitened, cf.item_factors, cf.system)
        with contextlib.suppress(np.linalg.LinAlgError):  # W_u singular (no regularisation): least squares below
            return cf_gifts(solve, rows.item_of_book, mine, weights, positions, cf.params.confidence, q.cf.scale)
    by_cf = np.zeros((len(positions), len(mine)), dtype=np.float32)
    targets = rows.item_of_book[positions]
    reachable = targets >= 0
    if reachable.any():
        given = cf.explain(items[known], weights[known], targets[reachable])
        by_cf[np.ix_(reachable, known)] = given * np.float32(q.cf.scale)
    return by_cf


def signal_reasons(
    catalogue: Catalogue,
    signals: BookSignals,
    weights: SignalWeights,
    mine: ReaderSignals,
    positions: IntArray,
    scores: npt.NDArray[np.float64],
) -> list[tuple[Reason, ...]]:
    """For each recommended book, what the reader's book signals say of it, with the reader's book behind each:
    "more by" an author the reader came back to, "next in" a series they read. Its share: what the signal added
    to the book's score, of that and the blend's score (when positive)."""
    said = mine.sources(signals, positions)
    by_author = weights.author > 0
    by_series = weights.next > 0
    found: list[tuple[Reason, ...]] = []
    for row, score, author, code, count, source, following, read in zip(
        positions.tolist(), scores.tolist(), said.author.tolist(), said.author_code.tolist(), said.liked_by.tolist(),
        said.by_author.tolist(), said.following.tolist(), said.furthest_read.tolist(), strict=True,
    ):  # fmt: skip
        reasons = []
        if author > 0 and by_author:
            text = f"more by {signals.author_names[code]}, {count} of whose books you read"
            reasons.append(_signal(catalogue, source, "author", weights.author * author, score, text))
        if following > 0 and by_series:
            text = f"next in {signals.series_names[signals.series[row]]} after #{signals.position[read]:g}"
            reasons.append(_signal(catalogue, read, "series", weights.next, score, text))
        found.append(tuple(reasons))
    return found


def _signal(catalogue: Catalogue, source: int, part: str, added: float, score: float, text: str) -> Reason:
    share = added / (added + max(score - added, 0.0)) if added > 0 else 0.0
    return Reason(int(catalogue.book_ids[source]), catalogue.titles[source], part, share, text)
