"""The learned second stage: a version's trees (model/trees.py, fitted by training/ranker.py, LightGBM's
LambdaRank) re-rank a reader's candidates, the blend's DEPTH best and the books their signals gather (the books of
their AUTHORS most-read authors, the next volumes of the series they started), from what the blend and the signals
say of each (FEATURES). Within a series the reader started, the unread volumes still come in order
(model/signal_loops.py's `reranked`), and filters, pages and the author cap hold as for every answer. The loops are
in model/learned_loops.py.

The candidates are the same whichever way the shortlist was read (scanned, multiplied, or the catalogue index's):
the blend's best are counted in the order of their exact scores, so an answer is the same alone or in a batch.
Training builds its rows with the same `candidates`, so the trees see what serving shows them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from recommender.model import learned_loops
from recommender.model.learned_loops import WIDTH
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
from recommender.model.signals import NO_MASK, BookSignals, ReaderSignals
from recommender.model.trees import Trees, TreesError

# The blend's best that the trees re-rank (an answer's own depth where deeper: its size and ten more), with the books
# of the reader's AUTHORS most-read authors and the next volumes. Measured on the Goodreads sample (default fit,
# split seeds 1 and 2): the blend's 50 best and 20 authors (185 candidates a reader) gave NDCG@10 0.3454 and
# 0.3493, 20 and 5 (84 candidates) 0.3406 and 0.3474 at two thirds of the learned answer's cost; the 32 or 64 most
# popular of the authors' books in place of fewer authors lost more.
DEPTH = 20
AUTHORS = 5
# At most this many books the signals raise a reader (the next volumes, then the most popular of their authors'
# books), beside the blend's: an author of thousands of books ("Anonymous") would otherwise price an answer by the
# catalogue, and LightGBM refuses a reader of more than 10,000 candidates.
MOST_CANDIDATES = 2_000

# The search may leave readers of fewer books than this to the weighed signals (model/signals.py) where the trees
# rank them worse (`Ranker.least_history`): on the Goodreads sample, readers cut to three books gained with the
# default fit's trees and lost with the searched fit's (0.93 times the blend, with the deeper candidates once tried).
SHORT_HISTORY = 5

# What `because` weighs the signals by when the trees rank: each said wherever it holds, its share against the
# trees' score.
REASONS = SignalWeights(author=1.0, next=1.0)

Float64Matrix = npt.NDArray[np.float64]


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
    found = learned_loops.candidate_values(
        np.asarray(listed.rows, dtype=np.int32), NO_MASK if allowed is None else allowed,
        (AUTHORS, depth, MOST_CANDIDATES), (mine.seen, mine.authors, mine.liked_by, mine.started, mine.following),
        _book(signals), _rows(rows), exact_terms(q),
    )  # fmt: skip
    return Candidates(*found)


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
    found = learned_loops.best(
        np.asarray(listed.rows, dtype=np.int32), NO_MASK if allowed is None else allowed,
        (AUTHORS, depth, MOST_CANDIDATES, limit),
        (mine.seen, mine.authors, mine.liked_by, mine.started, mine.furthest, mine.following), _book(signals),
        _rows(rows), exact_terms(q), trees.layout.arrays,
    )  # fmt: skip
    return Scored(*found)


def _book(signals: BookSignals) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray, Float64Array]:
    """(author pointers, author codes, author's book pointers, their books, series, place)."""
    return (*signals.by_book, *signals.by_author, signals.series, signals.position)


def _rows(rows: BookRows) -> tuple[FloatArray, IntArray, FloatArray, FloatArray]:
    return rows.item_factors, rows.item_of_book, rows.content, rows.popularity
