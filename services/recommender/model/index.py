"""A catalogue index: a reader's best books found among a few hundred candidates instead of the whole catalogue.

The ranking (model/ranking.py) is one inner product, a sum of parts: CF, content and popularity. A book among the
best of the sum is among the best of at least one part, so each part has its own search and their union is
re-scored exactly:
- CF for a reader (`NormOrder`): an exact scan of the item factors, longest first, that stops when the longest
  left cannot reach the n-th best found (|q.x| <= |q||x|). ALS's item norms are heavy-tailed (popular books have
  long vectors): at 1,000,000 books a scan reads about 6% of the CF books.
- content, and CF between books (unit vectors, no norm to prune by; `Cells`): a Faiss inverted-file index (IVF,
  8-bit scalar quantised, inner product): the cells of the nearest centroids, about 1% of the catalogue.
- popularity: one order for everybody.

Fagin's threshold: a book in none of the lists scores at most the sum of each list's n-th value. When the k-th best
candidate scores below that bound, n grows (up to `IndexParams.most_fetched`). The CF and popularity lists are
exact, so the bound holds whenever the content cells found their part's best; recall@10 against the exact ranking
was 1.000 over 2,000 readers at 1,000,000 demo books (bench/scale.py), and on real data see bench/index_recall.py.

Books added or changed after the index was built (`Search.segment`) are always candidates: a small exact segment.
A predicate (`allowed`, a mask over the catalogue) restricts every part's search; a selective one (few books
pass) is answered by an exact pass over the books it allows, so no filter loses recall.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import faiss
import numpy as np
import numpy.typing as npt

from recommender.model.dataset import lookup
from recommender.model.params import IndexParams
from recommender.model.ranking import BookRows, FloatArray, IntArray, Query, Scored, best_of

BoolArray = npt.NDArray[np.bool_]

# Serving searches one query per request on one thread; threads would only contend with the other requests.
faiss.omp_set_num_threads(1)


# How many times more cells a content search reads when no CF part ranks beside it (bench/index_recall.py: content-led
# readers' recall@10 on MovieLens rose from 0.965 to 1.000, and on Goodreads from 0.985 to 1.000, 400 readers each).
CONTENT_LED_PROBES = 4

# Rows scanned per step by NormOrder: the first steps hold the longest vectors, so most scans stop after one or two.
SCAN_BLOCK = 2048


@dataclass(frozen=True)
class Excluded:
    """What a search must not return, in index rows: a reader's own books, and the rows a predicate rejects."""

    rows: IntArray  # sorted
    allowed: BoolArray | None  # per index row; None: every row

    def keeps(self, rows: IntArray) -> BoolArray:
        keep = np.ones(len(rows), dtype=bool) if self.allowed is None else self.allowed[rows]
        _at, excluded = lookup(self.rows, rows)
        return keep & ~excluded

    def selector(self) -> tuple[faiss.IDSelector | None, list[object]]:
        """A Faiss selector of the rows kept, and the objects it points into (they must outlive the search)."""
        parts: list[faiss.IDSelector] = []
        alive: list[object] = []
        if self.allowed is not None:
            bits = np.packbits(self.allowed, bitorder="little")
            parts.append(faiss.IDSelectorBitmap(len(self.allowed), faiss.swig_ptr(bits)))
            alive.append(bits)
        if len(self.rows):
            ids = self.rows.astype(np.int64)  # held while the selector is built: swig_ptr keeps no reference
            batch = faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids))
            parts.append(faiss.IDSelectorNot(batch))
            alive += [ids, batch]
        if not parts:
            return None, alive
        if len(parts) == 2:
            alive += parts
            return faiss.IDSelectorAnd(parts[0], parts[1]), alive
        return parts[0], alive


@dataclass(frozen=True)
class Found:
    """One part's candidates (index rows) and the value a row outside them cannot exceed."""

    rows: IntArray
    bound: float


@dataclass(frozen=True)
class NormOrder:
    """Exact top inner products over vectors of very different lengths: scanned longest first until the rest
    cannot reach the n-th best (see the module)."""

    rows: IntArray  # index rows, longest vector first
    vectors: FloatArray  # in that order, contiguous
    norms: FloatArray  # decreasing
    covers_all: bool  # every index row has a vector (else the others score 0 in this part)

    @classmethod
    def of(cls, vectors: FloatArray, rows: IntArray, total: int) -> NormOrder:
        norms = np.linalg.norm(vectors, axis=1)
        order = np.argsort(-norms, kind="stable")
        return cls(
            rows[order].astype(np.int32),
            np.ascontiguousarray(vectors[order], dtype=np.float32),
            norms[order].astype(np.float32),
            len(rows) == total,
        )

    def top(self, q: FloatArray, n: int, excluded: Excluded) -> Found:
        """The `n` best rows that `excluded` keeps. A reader's own books are few: the scan keeps that many more
        and drops them at the end (cheaper than a lookup per block); a predicate's mask is applied per block."""
        length = float(np.linalg.norm(q))
        wanted = n + len(excluded.rows)
        rows: list[IntArray] = []
        values: list[FloatArray] = []
        kept, bar, start = 0, -math.inf, 0
        while start < len(self.rows) and length * float(self.norms[start]) > bar:
            stop = start + SCAN_BLOCK
            block_rows = self.rows[start:stop]
            block = self.vectors[start:stop] @ q
            if excluded.allowed is not None:
                allowed = excluded.allowed[block_rows]
                block_rows, block = block_rows[allowed], block[allowed]
            rows.append(block_rows)
            values.append(block)
            kept += len(block_rows)
            start = stop
            if kept >= wanted:
                joined = np.concatenate(values)
                best = np.argpartition(-joined, wanted - 1)[:wanted]
                rows, values = [np.concatenate(rows)[best]], [joined[best]]
                kept, bar = wanted, float(joined[best].min())
        found = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int32)
        found = found[excluded.keeps(found)]
        left = length * float(self.norms[start]) if start < len(self.rows) else -math.inf
        bound = max(bar if kept >= wanted else -math.inf, left, -math.inf if self.covers_all else 0.0)
        return Found(found.astype(np.int32), bound)


@dataclass(frozen=True)
class Cells:
    """Approximate top inner products over unit vectors: a Faiss IVF index (see the module), its ids index rows."""

    index: faiss.IndexIVFScalarQuantizer
    nprobe: int

    @classmethod
    def of(cls, vectors: FloatArray, ids: IntArray, params: IndexParams, seed: int = 0) -> Cells:
        count, width = vectors.shape
        lists = max(1, min(int(2 * math.sqrt(count)), count // 40))
        quantizer = faiss.IndexFlatIP(width)
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, width, lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        sample = np.random.default_rng(seed).choice(count, min(count, 40 * lists), replace=False)
        data = np.ascontiguousarray(vectors, dtype=np.float32)
        with _threads(params.threads):
            index.train(data[np.sort(sample)])
            index.add_with_ids(data, np.asarray(ids, dtype=np.int64))
        return cls(index, cls.probes(lists, params))

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @staticmethod
    def probes(lists: int, params: IndexParams) -> int:
        return max(1, min(lists, max(params.fewest_probes, math.ceil(params.probed_share * lists))))

    def top(self, q: FloatArray, n: int, excluded: Excluded, widen: float = 1.0) -> Found:
        """`widen`: how many times the usual cells to read (a predicate that keeps a share s of the catalogue
        reads 1/s times as many)."""
        selector, _alive = excluded.selector()
        probes = min(self.index.nlist, math.ceil(self.nprobe * widen))
        params = faiss.SearchParametersIVF()
        params.nprobe = probes
        if selector is not None:
            params.sel = selector
        values, rows = self.index.search(np.ascontiguousarray(q[None, :], dtype=np.float32), n, params=params)
        found = rows[0] >= 0
        bound = float(values[0][found][-1]) if found.sum() >= n else 0.0
        return Found(rows[0][found].astype(np.int32), max(bound, 0.0))

    def to_bytes(self) -> npt.NDArray[np.uint8]:
        return np.asarray(faiss.serialize_index(self.index), dtype=np.uint8)

    @classmethod
    def from_bytes(cls, data: npt.NDArray[np.uint8], params: IndexParams) -> Cells:
        # Already of its own class, and owning its memory (a downcast wrapper would not: the index would be freed).
        index = faiss.deserialize_index(np.ascontiguousarray(data, dtype=np.uint8))
        if not isinstance(index, faiss.IndexIVFScalarQuantizer):
            raise ValueError("the stored index is not an inverted-file index")
        return cls(index, cls.probes(index.nlist, params))


@dataclass(frozen=True)
class CatalogueIndex:
    """A version's index of its catalogue (the books it was trained on): one search per part of the ranking.
    Index rows are the positions of the trained catalogue."""

    book_ids: IntArray  # of the index rows
    cf: NormOrder  # a reader's CF part
    book_cf: Cells | None  # a book's CF part (unit item factors), for SimilarBooks; None with fewer than 2 CF books
    content: Cells
    popular: IntArray  # index rows by decreasing popularity

    @property
    def size(self) -> int:
        return len(self.book_ids)


def build(book_ids: IntArray, rows: BookRows, unit_factors: FloatArray, params: IndexParams) -> CatalogueIndex:
    """The index of a catalogue whose rows are `rows` (`unit_factors`: the item factors at unit length)."""
    has_cf = np.flatnonzero(rows.item_of_book >= 0).astype(np.int32)
    book_cf = Cells.of(unit_factors[rows.item_of_book[has_cf]], has_cf, params) if len(has_cf) >= 2 else None
    content = Cells.of(rows.content, np.arange(rows.num_books, dtype=np.int32), params)
    return restore(book_ids, rows, content, book_cf)


def restore(book_ids: IntArray, rows: BookRows, content: Cells, book_cf: Cells | None) -> CatalogueIndex:
    """The index from its Faiss parts (what a version stores); the exact parts follow from the rows at once."""
    if content.size != rows.num_books or len(book_ids) != rows.num_books:
        raise ValueError("the index does not cover the catalogue it is stored with")
    has_cf = np.flatnonzero(rows.item_of_book >= 0).astype(np.int32)
    if (0 if book_cf is None else book_cf.size) != (len(has_cf) if len(has_cf) >= 2 else 0):
        raise ValueError("the index's CF part does not cover the books with item factors")
    return CatalogueIndex(
        book_ids=np.asarray(book_ids, dtype=np.int32),
        cf=NormOrder.of(rows.item_factors[rows.item_of_book[has_cf]], has_cf, rows.num_books),
        book_cf=book_cf,
        content=content,
        popular=rows.popular_order,
    )


@dataclass(frozen=True)
class Search:
    """A model's use of its index: where each index row is in the model's catalogue now (books added since move
    the rows), and the books the index does not cover (the exact segment)."""

    index: CatalogueIndex
    positions: IntArray  # catalogue position of each index row
    segment: IntArray  # catalogue positions the index does not cover (added or changed since it was built)
    row_of: IntArray  # index row of each catalogue position (-1: in the segment)
    params: IndexParams

    @classmethod
    def over(cls, index: CatalogueIndex, book_ids: IntArray, changed: IntArray, params: IndexParams) -> Search:
        """The search of `index` in a catalogue of `book_ids` (every book the index has, and more), where the
        books `changed` (ids) differ from what the index holds."""
        positions = np.searchsorted(book_ids, index.book_ids).astype(np.int32)
        row_of = np.full(len(book_ids), -1, dtype=np.int32)
        row_of[positions] = np.arange(index.size, dtype=np.int32)
        if len(changed):
            row_of[np.isin(book_ids, changed)] = -1
        return cls(index, positions, np.flatnonzero(row_of < 0).astype(np.int32), row_of, params)

    def ranked(
        self, rows: BookRows, q: Query, limit: int, allowed: BoolArray | None = None, between_books: bool = False
    ) -> Scored:
        """The query's `limit` best catalogue positions, scored exactly and best first (`ranking.scored`), its
        seen books left out. `allowed` (per catalogue position) restricts the answer; `between_books`: the CF
        part compares books (unit item factors), as SimilarBooks does."""
        if allowed is not None:
            allowed = allowed.copy()
            allowed[q.seen] = False
            if int(allowed.sum()) < self.params.exact_below:
                return best_of(rows, q, _exact_top(rows, q, np.flatnonzero(allowed), limit), limit)
        seen_rows = self.row_of[q.seen]
        excluded = Excluded(np.sort(seen_rows[seen_rows >= 0]), None if allowed is None else allowed[self.positions])
        share = 1.0 if allowed is None else float(allowed.mean())
        segment = np.setdiff1d(self.segment, q.seen) if allowed is None else self.segment[allowed[self.segment]]
        n = max(self.params.fewest_fetched, 2 * limit)
        while True:
            parts = self._parts(rows, q, n, excluded, share, between_books)
            fresh = _exact_top(rows, q, segment, n)
            candidates = np.unique(np.concatenate([self.positions[np.concatenate([p.rows for p in parts])], fresh]))
            answer = best_of(rows, q, candidates.astype(np.int32), limit)
            bound = sum(p.bound for p in parts)
            if len(segment) > n:
                bound = max(bound, _value(rows, q, fresh[-1:])[0])
            if len(answer.positions) < limit or n >= self.params.most_fetched:
                return answer
            if _value(rows, q, answer.positions[-1:])[0] >= bound:
                return answer
            n *= 4

    def _parts(
        self, rows: BookRows, q: Query, n: int, excluded: Excluded, share: float, between_books: bool
    ) -> list[Found]:
        k, d = rows.width
        widen = 1.0 / max(share, 1e-6)
        found: list[Found] = []
        if q.cf.scale and q.user is not None:
            if not between_books:
                found.append(self.index.cf.top(q.vector[:k], n, excluded))
            elif self.index.book_cf is not None:
                found.append(self.index.book_cf.top(q.vector[:k], n, excluded, widen))
        if q.content.scale and q.profile is not None:
            # Cells missed are the one thing the threshold cannot see; where content alone decides the list (a
            # reader CF does not know), they cost the most, so its search reads more of them.
            led = CONTENT_LED_PROBES if not found else 1.0
            found.append(self.index.content.top(q.vector[k : k + d], n, excluded, widen * led))
        found.append(self._popular(rows, q, n, excluded))
        return found

    def _popular(self, rows: BookRows, q: Query, n: int, excluded: Excluded) -> Found:
        order = self.index.popular
        taken: list[IntArray] = []
        start, kept, step = 0, 0, n + len(excluded.rows)
        while kept < n and start < len(order):
            block = order[start : start + step]
            taken.append(block[excluded.keeps(block)])
            kept += len(taken[-1])
            start += step
            step *= 4
        chosen = np.concatenate(taken)[:n] if taken else np.zeros(0, dtype=np.int32)
        last = float(rows.popularity[self.positions[chosen[-1]]]) if len(chosen) == n else 0.0
        return Found(chosen.astype(np.int32), float(q.vector[-1]) * last)


def _value(rows: BookRows, q: Query, positions: IntArray) -> FloatArray:
    """The inner product of the query vector with the rows at `positions` (float32, as the index ranks)."""
    k, d = rows.width
    items = rows.item_of_book[positions]
    values = rows.content[positions] @ q.vector[k : k + d] + rows.popularity[positions] * q.vector[-1]
    known = items >= 0
    if k and known.any():
        values[known] += rows.item_factors[items[known]] @ q.vector[:k]
    return values.astype(np.float32)


def _exact_top(rows: BookRows, q: Query, among: npt.NDArray[np.integer], n: int) -> IntArray:
    """The `n` best of the positions `among` by the query's inner product, by a pass over them all."""
    positions: IntArray = np.asarray(among, dtype=np.int32)
    if len(positions) <= n:
        return positions
    values = _value(rows, q, positions)
    best = np.argpartition(-values, n - 1)[:n]
    return positions[best[np.argsort(-values[best], kind="stable")]]


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """Faiss's OpenMP threads for a build; searches run on one."""
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(1)
