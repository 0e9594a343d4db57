"""The learned second stage: a version's trees (model/trees.py, fitted by training/ranker.py, LightGBM's
LambdaRank) re-rank a reader's candidates, the blend's DEPTH best and the books their signals gather (the books of
their most-read authors, the next volumes of the series they started), from what the blend and the signals say of
each (FEATURES). Within a series the reader started, the unread volumes still come in order (model/signal_loops.py's
`reranked`), and filters, pages and the author cap hold as for every answer.

The candidates are the same whichever way the shortlist was read (scanned, multiplied, or the catalogue index's):
the blend's best are counted in the order of their exact scores, so an answer is the same alone or in a batch.
Training builds its rows with the same `candidates`, so the trees see what serving shows them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from recommender.model import signal_loops as loops
from recommender.model.compiled import blended, compiled
from recommender.model.params import SignalWeights
from recommender.model.ranking import (
    BookRows,
    BoolArray,
    Float64Array,
    FloatArray,
    IntArray,
    Query,
    Scored,
    exact_terms,
)
from recommender.model.shortlist import Shortlist
from recommender.model.signal_loops import holds
from recommender.model.signals import MOST_AUTHORS, NO_MASK, NO_PRODUCT, BookSignals, ReaderSignals
from recommender.model.trees import Trees, TreesError

# The blend's best that the trees re-rank (with the books the signals gather; an answer's own depth where deeper).
DEPTH = 50
# At most this many books the signals raise a reader (the next volumes, then the most popular of their authors'
# books), beside the blend's: an author of thousands of books ("Anonymous") would otherwise price an answer by the
# catalogue, and LightGBM refuses a reader of more than 10,000 candidates.
MOST_CANDIDATES = 2_000

FEATURES = (
    "blended score", "CF part", "content part", "popularity", "author", "next volume", "later volume",
    "place in the blend's order", "in a series the reader started", "place in its series", "reader's books",
    "authors of the book",
)  # fmt: skip
WIDTH = len(FEATURES)

# The search may leave readers of fewer books than this to the weighed signals (model/signals.py) where the trees
# rank them worse (`Ranker.least_history`): on the Goodreads sample, readers cut to three books gained with the
# default fit's trees and lost with the searched fit's.
SHORT_HISTORY = 5

# What `because` weighs the signals by when the trees rank: each said wherever it holds, its share against the
# trees' score.
REASONS = SignalWeights(author=1.0, next=1.0)

Float64Matrix = npt.NDArray[np.float64]

_UNREACHED = np.ones(3)  # the signals' weights where no floor applies: any will do


@dataclass(frozen=True)
class Candidates:
    """A reader's candidates in the order of their blended scores, with their FEATURES and what `reranked` reads."""

    rows: IntArray  # catalogue rows
    values: Float64Matrix  # a row of FEATURES each
    scores: Float64Array  # blended, with its CF and content parts
    cf: Float64Array
    content: Float64Array
    found: IntArray  # every row considered, sorted (`rows` and the shortlist's others); per row: raised by the
    # signals, in the blend's shortlist
    raised: BoolArray
    listed: BoolArray
    signals: tuple[Float64Array, Float64Array, Float64Array]  # per sorted row: author, next, held


@dataclass(frozen=True)
class Ranker:
    """A version's learned stage: its trees, and the shortest history they rank (a reader of fewer books gets the
    weighed signals)."""

    trees: Trees
    least_history: int = 0

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        """What `of_arrays` reads back (a version's stored file)."""
        return self.trees.arrays() | {"least_history": np.array(self.least_history)}

    @classmethod
    def of_arrays(cls, arrays: dict[str, npt.NDArray[Any]]) -> Ranker:
        """The ranker in `arrays`, checked (TreesError: not trees this release can serve)."""
        trees = Trees.of_arrays(arrays)
        if trees.features != WIDTH:
            raise TreesError(f"the trees read {trees.features} features, this release gives {WIDTH}")
        return cls(trees, int(arrays["least_history"]))


def serves(ranker: Ranker | None, mine: ReaderSignals) -> bool:
    """Whether the trees rank this reader's answer."""
    return ranker is not None and len(mine.seen) >= ranker.least_history


def depth_for(limit: int) -> int:
    """The blend's best an answer of `limit` books re-ranks."""
    return max(DEPTH, limit + max(limit, 10))


def candidates(
    signals: BookSignals,
    mine: ReaderSignals,
    rows: BookRows,
    q: Query,
    listed: Shortlist,
    depth: int,
    allowed: BoolArray | None = None,
) -> Candidates:
    """The blend's `depth` best among the `listed` rows (which must hold them) and every book the reader's signals
    gather that the answer may hold (`allowed`; None: all), with their features."""
    unbounded = ((NO_PRODUCT, 0.0, rows.popularity), -np.inf, 0.0, _UNREACHED, signals.series, mine.started)
    found, raised, listed_too = loops.candidates(
        np.asarray(listed.rows, dtype=np.int32), mine.authors, mine.liked_by, MOST_AUTHORS, *signals.by_author,
        mine.following, mine.seen, NO_MASK if allowed is None else allowed, unbounded,
    )  # fmt: skip
    author, next_volume, held = loops.features(
        found, mine.authors, mine.liked_by, mine.started, mine.following, *signals.by_book, signals.series,
        signals.position,
    )  # fmt: skip
    if raised.sum() > MOST_CANDIDATES:  # whether the shortlist lists them or not: the same whatever its depth
        raised &= _most_popular(found, raised, next_volume > 0, rows.popularity)
        kept = raised | listed_too
        found, raised, listed_too = found[kept], raised[kept], listed_too[kept]
        author, next_volume, held = author[kept], next_volume[kept], held[kept]
    ordered, scores, cf, text = blended(
        rows.item_factors, rows.item_of_book, rows.content, rows.popularity, found, *exact_terms(q)
    )
    kept, values = _values(
        ordered, scores, cf, text, (found, raised, listed_too), (author, next_volume, held), depth,
        (rows.popularity, signals.series, signals.position, signals.by_book[0]), (mine.started, len(mine.seen)),
    )  # fmt: skip
    ordered, scores, cf, text = ordered[kept], scores[kept], cf[kept], text[kept]
    return Candidates(ordered, values, scores, cf, text, found, raised, listed_too, (author, next_volume, held))


def _most_popular(found: IntArray, raised: BoolArray, first: BoolArray, popularity: FloatArray) -> BoolArray:
    """Of the `found` rows the signals `raised`, those `first` marks and then the most popular others (ties: the lower
    row), MOST_CANDIDATES in all."""
    others = np.flatnonzero(raised & ~first)
    room = max(MOST_CANDIDATES - int((raised & first).sum()), 0)
    chosen = np.zeros(len(found), dtype=np.bool_)
    chosen[others[np.lexsort((found[others], -popularity[found[others]]))[:room]]] = True
    return chosen | (raised & first)


def best(
    trees: Trees,
    signals: BookSignals,
    mine: ReaderSignals,
    rows: BookRows,
    q: Query,
    listed: Shortlist,
    counts: tuple[int, int],
    allowed: BoolArray | None,
) -> Scored:
    """The `limit` best (`counts`: depth, limit) of the reader's `candidates` by the trees' scores, the unread
    volumes of each series the reader started in order (ties: the earlier volume, then the more popular book), best
    first; the scores shown are the trees'."""
    depth, limit = counts
    found = candidates(signals, mine, rows, q, listed, depth, allowed)
    chosen, scores = loops.reranked(
        found.rows, trees.scores(found.values), found.found, found.raised, found.listed, found.signals,
        (len(found.rows), limit), np.zeros(3), rows.popularity, (mine.started, mine.furthest),
        (signals.series, signals.position),
    )  # fmt: skip
    return Scored(found.rows[chosen], scores, found.cf[chosen], found.content[chosen])


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
    signals raised, the first `depth` of the blend's shortlist): their indices and their FEATURES. Per row of the
    `sorted_rows` (found, raised, listed), its `signals` (author, next, held). `book`:
    (popularity, series, place, author pointers); `reader`: (started series, books read)."""
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
