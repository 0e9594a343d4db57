"""The first stage of the one ranking (model/ranking.py): a query's product with every book's row, and the
shortlist of rows whose exact scores then choose the answer. A single request's product scans the rows' 8-bit codes
(model/scan.py) where their bound is narrow; a batch's, and a query whose bound is wide, is one float32 product.
Either way the shortlist keeps every book whose exact score could be among the best, so an answer is the same
alone or in a batch, scanned or multiplied."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recommender.model.compiled import compiled
from recommender.model.ranking import BookRows, BoolArray, Float64Array, FloatArray, IntArray, Query, Scored, best_of
from recommender.model.scan import UNIT, narrowed

# From this many queries, one float32 matrix product (OpenBLAS) costs less per query than the compressed scan
# (model/scan.py); fewer are scanned. Measured at 144 and 529 dimensions, 10,000 books: the scan 65 and 240 us a
# query, the product 52 and 239 us a query in batches of 16.
FEWEST_FOR_ONE_PRODUCT = 16
# Below this many queries, one matrix-vector product each is faster than a matrix product (OpenBLAS, measured).
FEWEST_ROWS_FOR_ONE_PRODUCT = 4
# A query is scanned only where the codes' bound is at most this, in the blend's units (z-scores, so the same for
# every catalogue): wider, its shortlist holds most of the catalogue. Measured at 400 factors (10,000 books, 600
# readers each, the shortlist for 20 books): a bound of 0.5 to 0.75 kept 81 books (median), 0.75 to 1 kept 127 and
# 1 to 1.5 kept 352 on the demo catalogue; on MovieLens, above 1.5 nearly every book.
WIDEST_SCAN = 1.5
# A scanned query whose shortlist holds more than this share of the catalogue is multiplied in float32 after all:
# re-scoring a book from its float row reads what the float32 product reads of it, and more slowly (gathered).
MOST_REFINED = 0.5


def ranked(
    rows: BookRows, queries: Sequence[Query], limits: Sequence[int], allowed: Sequence[BoolArray | None] = ()
) -> list[Scored]:
    """Each query's answer: its `limits[i]` best books, its seen books left out and, with `allowed[i]` (a mask
    over the catalogue), only those it allows; chosen and ordered by their exact scores among the `shortlist`.
    What a reader is served and what evaluation measures."""
    masks = list(allowed) or [None] * len(queries)
    return [
        best_of(rows, q, candidates, limit)
        for q, candidates, limit in zip(queries, shortlist(rows, queries, limits, masks), limits, strict=True)
    ]


def exact_top(
    rows: BookRows, queries: Sequence[Query], limits: Sequence[int], allowed: Sequence[BoolArray | None] = ()
) -> list[IntArray]:
    """Each query's best catalogue rows, best first (`ranked`'s books)."""
    return [answer.positions for answer in ranked(rows, queries, limits, allowed)]


def shortlist(
    rows: BookRows, queries: Sequence[Query], limits: Sequence[int], masks: Sequence[BoolArray | None]
) -> list[IntArray]:
    """Per query, in catalogue order: at least its `limit` best rows by one product with every book's row (those
    at or above a bar no lower than the last of them, `listing`), and every row within twice the product's bound of
    the bar (float32's rounding, 2 n UNIT |q| max|x| for n terms, and the scan's codes, model/scan.py): a book
    whose exact score is among the `limit` best (or ties with the last of them) is there, alone or in a batch."""
    return [found.rows for found in shortlists(rows, queries, limits, masks)]


@dataclass(frozen=True)
class Shortlist:
    """A query's shortlist (`shortlist`) and the product it was read from: a book's value there is its exact score
    plus the query's `offset` plus TIE_BREAK times its popularity, give or take `margin`."""

    rows: IntArray  # in catalogue order
    values: FloatArray | None  # the product with every book's row, float32 or scanned (-inf: seen or not allowed)
    margin: float = 0.0  # twice how far a listed row's value can be from its exact score (plus offset and tie-break)
    outside: float = 0.0  # the same for any other row (the scan's codes: wider)


def shortlists(
    rows: BookRows,
    queries: Sequence[Query],
    limits: Sequence[int],
    masks: Sequence[BoolArray | None],
    scanned: bool | None = None,
) -> list[Shortlist]:
    """`shortlist`, with each query's product: scanned (model/scan.py) or multiplied in float32 (`scanned`; None:
    scanned where fewer than FEWEST_FOR_ONE_PRODUCT queries come and the codes' bound is at most WIDEST_SCAN, and
    multiplied after all where the scan's shortlist holds more than MOST_REFINED of the catalogue)."""
    if not queries:
        return []
    vectors = np.stack([q.vector for q in queries])
    # Either product is within `bound` |q| / 2 of the exact score (float32's rounding); the scan's codes add `coded`.
    bound = 4 * vectors.shape[1] * UNIT * rows.longest
    ranking, coded, scan = _products(rows, vectors, scanned)
    wanted = min(max(limits), rows.num_books)
    found = []
    parts = (rows.item_factors, rows.item_of_book, rows.content, rows.popularity)
    for row, q, mask, off, scanned_row in zip(ranking, queries, masks, coded.tolist(), scan, strict=True):
        allowed = _ALL if mask is None else mask
        margin = bound * float(np.linalg.norm(q.vector))
        listed = listing(row, q.seen, allowed, wanted, margin + 2 * off)
        if scanned_row and scanned is None and len(listed) > MOST_REFINED * rows.num_books:
            np.matmul(q.vector, rows.columns, out=row)  # refining them would cost more than the float32 product
            listed, scanned_row, off = listing(row, q.seen, allowed, wanted, margin), False, 0.0
        if scanned_row and wanted > 0:
            listed = narrowed(parts, q.vector, row, listed, (wanted, margin))
        found.append(Shortlist(listed, row, margin, margin + 2 * off))
    return found


def _products(rows: BookRows, vectors: FloatArray, scanned: bool | None) -> tuple[FloatArray, Float64Array, BoolArray]:
    """Each vector's product with every book's row (`shortlists`' choice), how far the scan's codes may move its
    values (0: multiplied in float32) and whether it was scanned."""
    few = scanned or (scanned is None and len(vectors) < FEWEST_FOR_ONE_PRODUCT)
    if not few:
        return _multiplied(rows, vectors), np.zeros(len(vectors)), np.zeros(len(vectors), dtype=bool)
    coded = rows.quantised.coded(vectors)
    scan = coded.bounds <= WIDEST_SCAN if scanned is None else np.ones(len(vectors), dtype=bool)
    if scan.all():  # one request, the common case: no copy into a batch's array
        return rows.quantised.products(coded), coded.bounds, scan
    if not scan.any():
        return _multiplied(rows, vectors), np.zeros(len(vectors)), scan
    ranking = np.empty((len(vectors), rows.num_books), dtype=np.float32)
    ranking[scan], ranking[~scan] = rows.quantised.products(coded[scan]), _multiplied(rows, vectors[~scan])
    return ranking, np.where(scan, coded.bounds, 0.0), scan


def _multiplied(rows: BookRows, vectors: FloatArray) -> FloatArray:
    """The float32 products of `vectors` with every book's row."""
    if len(vectors) >= FEWEST_ROWS_FOR_ONE_PRODUCT:
        return vectors @ rows.columns
    products = np.empty((len(vectors), rows.num_books), dtype=np.float32)
    for i, vector in enumerate(vectors):
        np.matmul(vector, rows.columns, out=products[i])
    return products


# Interleaved groups of a row whose maxima bound its k best values from below (see `listing`).
BAR_GROUPS = 256


@compiled
def listing(values: Any, seen: Any, allowed: Any, wanted: int, within: float) -> Any:
    """The rows whose `values` are at or above the bar less `within` (every row with a finite value where fewer
    than `wanted` have one; none where `wanted` is 0), after the `seen` rows' values and those not `allowed` (empty:
    all are) are made -inf, in place. The bar: a value that at least `wanted` of the values reach and that the
    wanted-th best does not fall below, the wanted-th largest of the maxima of BAR_GROUPS interleaved groups (the
    wanted groups with the largest maxima each hold a value at or above it: cheaper than partitioning the values
    themselves, and the values above the bar are few), or with more wanted, the wanted-th largest value."""
    books = len(values)
    for row in seen:
        values[row] = -np.inf
    if len(allowed):
        for row in range(books):
            if not allowed[row]:
                values[row] = -np.inf
    wanted = min(wanted, books)
    if wanted <= 0:
        return np.zeros(0, dtype=np.int32)
    if wanted > BAR_GROUPS or books < BAR_GROUPS:
        bar = np.partition(values, books - wanted)[books - wanted]
    else:
        maxima = np.full(BAR_GROUPS, -np.inf, dtype=np.float32)
        for row in range(books):
            group = row % BAR_GROUPS
            maxima[group] = max(maxima[group], values[row])
        bar = np.sort(maxima)[BAR_GROUPS - wanted]
    low = bar - within if np.isfinite(bar) else -np.inf
    found = np.empty(books, dtype=np.int32)
    count = 0
    for row in range(books):
        if values[row] >= low and values[row] > -np.inf:
            found[count] = row
            count += 1
    return found[:count].copy()


_ALL = np.zeros(0, dtype=np.bool_)  # no mask: every book allowed
