"""The compressed scan: every book's row in 8 bits, a query's products with them summed exactly in integers, and
how far each product can be from the float product. The shortlist (model/shortlist.py's `shortlists`) keeps every
book within twice that distance of its bar, and the exact float64 scores choose the answer, so the answer is the
float product's, to the bit; the scan reads a quarter of the float32 rows' bytes.

Each dimension d of the rows (the columns' row d) is coded k = rint(x / s_d) in [-127, 127], s_d its largest
magnitude / 127, so x = s_d (k + e), |e| <= 1/2. A query v is scaled to a = v * s and coded q = rint(a / t), t
chosen so that no partial sum can leave int32: a = t (q + f), |f| <= 1/2. Then for a book with codes k

    v . x = t (q . k) + t (f . k) + a . e,   so   |v . x - t (q . k)| <= t |k|_1 / 2 + |a|_1 / 2,

where |k|_1 is at most the catalogue's widest row of codes: a bound per query, known before the scan. Measured on
the demo catalogue and the Goodreads sample (15 to 400 factors), it keeps 24 to 102 books for 20 asked, as a median;
on MovieLens at 400 factors most readers' bounds are wide against the blend's spread and would keep hundreds to
every book, so a query whose bound is wider than model/shortlist.py's WIDEST_SCAN, or whose scan keeps more than
its MOST_REFINED share of the catalogue, is multiplied in float32 instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from recommender.model.compiled import compiled, reordering

CODES = 127  # the largest magnitude of an 8-bit code
INT32 = 2**31 - 1
BLOCK = 8_192  # books coded at a time
UNIT = 2.0**-24  # float32's unit roundoff: the values are float32, rounded once from exact products

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int32]
Float64Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Quantised:
    """Rows (dimensions x books, as model/ranking.py's `columns`) in 8-bit codes, with each dimension's scale."""

    codes: npt.NDArray[np.int8]  # dimensions x books
    scales: Float64Array  # per dimension
    widest: float  # the largest sum of a book's codes' magnitudes

    @classmethod
    def of(cls, columns: FloatArray) -> Quantised:
        """The columns coded in blocks of books: no float64 or int64 copy of them all (gigabytes at a million)."""
        dimensions, books = columns.shape
        largest = np.maximum(columns.max(axis=1, initial=0.0), -columns.min(axis=1, initial=0.0))
        scales = largest.astype(np.float64) / CODES  # 0: a dimension of zeros
        divisors = np.where(scales > 0, scales, 1.0)[:, None]
        codes = np.empty((dimensions, books), dtype=np.int8)
        widest = 0
        for start in range(0, books, BLOCK):
            block = np.clip(np.rint(columns[:, start : start + BLOCK] / divisors), -CODES, CODES).astype(np.int8)
            codes[:, start : start + BLOCK] = block
            widest = max(widest, int(np.abs(block, dtype=np.int64).sum(axis=0).max(initial=0)))
        return cls(codes, scales, float(widest))

    def coded(self, vectors: FloatArray) -> CodedQueries:
        """The vectors coded for the scan, with their bounds: known before the scan, so a query whose bound is too
        wide to shortlist well need not be scanned."""
        most = max(INT32 // (CODES * max(len(self.scales), 1)), 1)  # a query code's largest magnitude: sums fit int32
        return CodedQueries(*coded_queries(vectors, self.scales, self.widest, most))

    def products(self, queries: CodedQueries) -> FloatArray:
        """Each coded query's scanned products with every book's row (queries x books, float32), each within its
        bound of the exact product."""
        values = np.empty((len(queries.steps), self.codes.shape[1]), dtype=np.float32)
        integer_products(queries.codes, self.codes, queries.steps, values)
        return values


@dataclass(frozen=True)
class CodedQueries:
    """Query vectors coded for the scan (`coded_queries`)."""

    codes: npt.NDArray[np.int32]  # queries x dimensions
    steps: Float64Array  # per query, t
    bounds: Float64Array  # per query, how far a scanned product can be from the exact product (see the module)

    def __getitem__(self, chosen: npt.NDArray[np.bool_]) -> CodedQueries:
        return CodedQueries(self.codes[chosen], self.steps[chosen], self.bounds[chosen])


@compiled
def coded_queries(vectors: Any, scales: Any, widest: float, most: int) -> tuple[Any, Any, Any]:
    """Per vector v: its codes q = rint(a / t), a = v * scales, t = max|a| / `most`; t; and the bound on how far
    t (q . k) can be from v . x for a book's codes k (the module's)."""
    count, dimensions = vectors.shape
    coded = np.zeros((count, dimensions), dtype=np.int32)
    steps = np.ones(count)
    bounds = np.zeros(count)
    for j in range(count):
        largest, total = 0.0, 0.0
        for d in range(dimensions):
            scaled = abs(np.float64(vectors[j, d]) * scales[d])
            largest = max(largest, scaled)
            total += scaled
        if largest > 0:
            steps[j] = largest / most
        for d in range(dimensions):
            coded[j, d] = np.int32(np.rint(np.float64(vectors[j, d]) * scales[d] / steps[j]))
        # |t q . k| <= max|a| |k|_1, rounded to float32 once (at worst to a neighbouring subnormal, 2^-149 apart)
        rounding = UNIT * largest * widest * (1 + UNIT) + 2.0**-149
        bounds[j] = (steps[j] * widest / 2 + total / 2 + rounding) * (1 + 2**-20)  # and float64's rounding of these
    return coded, steps, bounds


@compiled
def integer_products(coded: Any, codes: Any, steps: Any, values: Any) -> None:
    """values[j] = steps[j] (coded[j] . codes), the sums exact in int32, four dimensions at a time (each row of
    `codes` read once per four: the scan is bound by reading them)."""
    dimensions, books = codes.shape
    sums = np.empty(books, dtype=np.int32)
    for j in range(coded.shape[0]):
        sums[:] = 0
        d = 0
        while d + 4 <= dimensions:
            w0, w1, w2, w3 = coded[j, d], coded[j, d + 1], coded[j, d + 2], coded[j, d + 3]
            r0, r1, r2, r3 = codes[d], codes[d + 1], codes[d + 2], codes[d + 3]
            for b in range(books):
                sums[b] += w0 * np.int32(r0[b]) + w1 * np.int32(r1[b]) + w2 * np.int32(r2[b]) + w3 * np.int32(r3[b])
            d += 4
        while d < dimensions:
            w, r = coded[j, d], codes[d]
            for b in range(books):
                sums[b] += w * np.int32(r[b])
            d += 1
        step = steps[j]
        for b in range(books):
            values[j, b] = np.float32(step * np.float64(sums[b]))


@compiled
def refined(vector: Any, parts: tuple[Any, Any, Any, Any], rows: Any) -> Any:
    """The products of `vector` with the books at `rows` from their float rows (`parts`: item factors, item of
    book, content, popularity: the columns' rows, books first), summed in float64 and rounded once to float32: within
    float32's bound of the exact product, where the scan's values are within the codes' bound."""
    factors, item_of_book, content, popularity = parts
    k, d = factors.shape[1], content.shape[1]
    values = np.empty(len(rows), dtype=np.float32)
    for i in range(len(rows)):
        row, item = rows[i], item_of_book[rows[i]]
        total = _dot(vector[:k], factors[item]) if item >= 0 else 0.0
        total += _dot(vector[k : k + d], content[row]) + np.float64(vector[k + d]) * np.float64(popularity[row])
        values[i] = np.float32(total)
    return values


@reordering
def _dot(a: Any, b: Any) -> float:
    """a . b in float64, in any order: float64's rounding, whatever the order, is far below float32's bound."""
    total = 0.0
    for j in range(len(a)):
        total += np.float64(a[j]) * np.float64(b[j])
    return total


def narrowed(
    parts: tuple[FloatArray, IntArray, FloatArray, FloatArray],
    vector: FloatArray,
    values: FloatArray,
    listed: IntArray,
    bar: tuple[int, float],
) -> IntArray:
    """The scanned `listed` rows' `values` made exact to float32's bound, in place (`refined`; `parts`: item
    factors, item of book, content, popularity), and those of them within `margin` of their `wanted`-th best (`bar`:
    wanted, margin): the `wanted` best by exact score are among the scanned rows, and so among these."""
    wanted, margin = bar
    exact = values[listed] = refined(vector, parts, listed)
    if len(listed) <= wanted:
        return listed
    return listed[exact >= np.partition(exact, len(exact) - wanted)[len(exact) - wanted] - margin]
