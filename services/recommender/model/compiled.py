"""Loops compiled by numba, and the one every exact score goes through: a row's inner product with a vector in
float64. A request's exact scores are of a few dozen to a few hundred rows, where NumPy's fixed cost per call
(a few microseconds, a dozen calls for a score) outweighed the arithmetic.

`dots` adds a row's products in NumPy's own pairwise order (its `pairwise_sum`: eight running sums in blocks of
up to 128 terms, halves beyond), so a score is what `np.multiply(rows, vector, dtype=np.float64).sum(axis=1)`
gives, and, a row summed alone in a fixed order, the same whatever the other rows: the same alone or in a batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import numba
import numpy as np

from recommender.model import loop_cache

Function = TypeVar("Function", bound=Callable[..., Any])

BLOCK = 128  # NumPy's PW_BLOCKSIZE


def compiled(function: Function) -> Function:
    """`function` compiled on its first call, and kept in numba's cache beside its module where it may write."""
    return _njit(function)


def reordering(function: Function) -> Function:
    """`compiled`, its float sums free to be reordered (and so vectorised): only for a sum whose error bound holds
    in any order (model/scan.py's), never for an exact score, whose order is NumPy's (`dots`)."""
    return _njit(function, fastmath={"reassoc", "contract"})


def _njit(function: Function, **options: Any) -> Function:
    try:
        with _every_loop_stamped():
            return cast(Function, numba.njit(cache=True, nogil=True, **options)(function))
    except RuntimeError:  # no folder numba may cache in: compiled once per process instead
        return cast(Function, numba.njit(nogil=True, **options)(function))


@contextlib.contextmanager
def _every_loop_stamped() -> Iterator[None]:
    """numba's cache locators for the loop being decorated: stale when any loop module changed (model/loop_cache.py),
    not only its own; other packages' functions keep numba's setting."""
    config: Any = numba.core.config  # its settings are set from the environment when numba loads: untyped
    before = config.CACHE_LOCATOR_CLASSES
    config.CACHE_LOCATOR_CLASSES = loop_cache.LOCATORS
    try:
        yield
    finally:
        config.CACHE_LOCATOR_CLASSES = before


@compiled
def stable_order(keys: Any) -> Any:
    """The order of `keys`, smallest first, equal keys as they come (every key as float64, exact for the int32 and
    float32 keys sorted here: one sort compiled, not one per type)."""
    return np.argsort(keys.astype(np.float64), kind="mergesort")


@compiled
def top_columns(matrix: Any, k: int) -> Any:
    """Per row, the columns of its `k` largest values, largest first, ties to the earlier column (the first `k` of
    a stable sort of the row, largest first)."""
    k = min(k, matrix.shape[1])
    found = np.zeros((matrix.shape[0], k), dtype=np.int64)
    for i in range(matrix.shape[0]):
        held = 0
        for j in range(matrix.shape[1]):
            at = held
            while at > 0 and matrix[i, j] > matrix[i, found[i, at - 1]]:
                at -= 1
            if at < k:
                for move in range(min(held, k - 1), at, -1):
                    found[i, move] = found[i, move - 1]
                found[i, at] = j
                held = min(held + 1, k)
    return found


@compiled
def _block(matrix: Any, row: int, vector: Any, start: int, n: int) -> float:
    """The sum of the products matrix[row, i] * vector[i] (float64) for i in [start, start + n), n <= BLOCK, added
    as NumPy adds them, each product formed where it is added (no array of them written and read back)."""
    total = 0.0
    if n < 8:
        for i in range(start, start + n):
            total += np.float64(matrix[row, i]) * vector[i]
        return total
    # eight running sums (scalars: an array here would be allocated per row)
    s0 = np.float64(matrix[row, start]) * vector[start]
    s1 = np.float64(matrix[row, start + 1]) * vector[start + 1]
    s2 = np.float64(matrix[row, start + 2]) * vector[start + 2]
    s3 = np.float64(matrix[row, start + 3]) * vector[start + 3]
    s4 = np.float64(matrix[row, start + 4]) * vector[start + 4]
    s5 = np.float64(matrix[row, start + 5]) * vector[start + 5]
    s6 = np.float64(matrix[row, start + 6]) * vector[start + 6]
    s7 = np.float64(matrix[row, start + 7]) * vector[start + 7]
    whole = start + n - n % 8
    for i in range(start + 8, whole, 8):
        s0 += np.float64(matrix[row, i]) * vector[i]
        s1 += np.float64(matrix[row, i + 1]) * vector[i + 1]
        s2 += np.float64(matrix[row, i + 2]) * vector[i + 2]
        s3 += np.float64(matrix[row, i + 3]) * vector[i + 3]
        s4 += np.float64(matrix[row, i + 4]) * vector[i + 4]
        s5 += np.float64(matrix[row, i + 5]) * vector[i + 5]
        s6 += np.float64(matrix[row, i + 6]) * vector[i + 6]
        s7 += np.float64(matrix[row, i + 7]) * vector[i + 7]
    total = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for i in range(whole, start + n):
        total += np.float64(matrix[row, i]) * vector[i]
    return total


@compiled
def _dot(matrix: Any, row: int, vector: Any, frames: Any, sums: Any) -> float:
    """`matrix[row]`'s inner product with `vector` (float64) in float64, as NumPy adds a row's products: blocks of up to
    BLOCK terms, a longer span the sum of its halves (the first half a multiple of eight long), left before right.
    Without recursion (numba's cache cannot hold a recursive function): `frames` (start, length, stage) and `sums`
    are the stack."""
    n = len(vector)
    if n <= BLOCK:
        return _block(matrix, row, vector, 0, n)
    frames[0, 0], frames[0, 1], frames[0, 2] = 0, n, 0
    depth, held = 1, 0
    while depth:
        start, length, stage = frames[depth - 1, 0], frames[depth - 1, 1], frames[depth - 1, 2]
        half = length // 2 - (length // 2) % 8
        if length <= BLOCK:
            sums[held] = _block(matrix, row, vector, start, length)
            held += 1
            depth -= 1
        elif stage == 0:  # the first half next
            frames[depth - 1, 2] = 1
            frames[depth, 0], frames[depth, 1], frames[depth, 2] = start, half, 0
            depth += 1
        elif stage == 1:  # then the second
            frames[depth - 1, 2] = 2
            frames[depth, 0], frames[depth, 1], frames[depth, 2] = start + half, length - half, 0
            depth += 1
        else:  # both done: their sum
            held -= 1
            sums[held - 1] += sums[held]
            depth -= 1
    return sums[0]


@compiled
def _pairwise(terms: Any, frames: Any, sums: Any) -> float:
    """The sum of `terms` (float64) as NumPy adds a row (each times 1.0: exact)."""
    return _dot(terms.reshape((1, len(terms))), 0, np.ones(len(terms)), frames, sums)


@compiled
def dots(matrix: Any, rows: Any, vector: Any) -> Any:
    """Each of `matrix`'s `rows`' inner product with `vector`, in float64."""
    found = np.empty(len(rows))
    frames, sums, wide = _room(vector)
    for i in range(len(rows)):
        if len(wide) <= BLOCK:  # one block, the common case: called directly, a third cheaper than through `_dot`
            found[i] = _block(matrix, rows[i], wide, 0, len(wide))
        else:
            found[i] = _dot(matrix, rows[i], wide, frames, sums)
    return found


@compiled
def item_dots(factors: Any, item_of_book: Any, rows: Any, vector: Any) -> Any:
    """`dots` of the books at `rows` through their items' factors (0 for a book with none: item -1)."""
    found = np.zeros(len(rows))
    frames, sums, wide = _room(vector)
    for i in range(len(rows)):
        item = item_of_book[rows[i]]
        if item >= 0 and len(wide) <= BLOCK:  # as in `dots`
            found[i] = _block(factors, item, wide, 0, len(wide))
        elif item >= 0:
            found[i] = _dot(factors, item, wide, frames, sums)
    return found


@compiled
def _room(vector: Any) -> tuple[Any, Any, Any]:
    """Room for one call's sums: a stack of 64 levels (rows of up to 128 * 2^63 terms), and `vector` in float64."""
    return np.empty((64, 3), dtype=np.int64), np.empty(64), vector.astype(np.float64)


@compiled
def blended(
    factors: Any,
    item_of_book: Any,
    content: Any,
    popularity: Any,
    rows: Any,
    user: Any,
    profile: Any,
    parts: Any,
) -> tuple[Any, Any, Any, Any]:
    """The books at `rows` by their exact blended scores, best first (ties: the more popular, then the earlier in
    `rows`): (rows, scores, CF part, content part). `parts`: per part (CF, content, popularity) its mean, inverse
    spread and weight, each part z = (x - mean) * inverse; `user` or `profile` empty: that part is 0."""
    n = len(rows)
    cf = (item_dots(factors, item_of_book, rows, user) - parts[0, 0]) * parts[0, 1] if len(user) else np.zeros(n)
    text = (dots(content, rows, profile) - parts[1, 0]) * parts[1, 1] if len(profile) else np.zeros(n)
    scores = np.empty(n)
    liked = np.empty(n, dtype=popularity.dtype)
    for i in range(n):
        liked[i] = popularity[rows[i]]
        popular = (np.float64(liked[i]) - parts[2, 0]) * parts[2, 1]
        scores[i] = parts[0, 2] * cf[i] + parts[1, 2] * text[i] + parts[2, 2] * popular
    order = stable_order(-liked)
    order = order[stable_order(-scores[order])]
    return rows[order], scores[order], cf[order], text[order]


@compiled
def part_statistics(
    seen: Any, user: Any, unit: Any, weights: Any, rows: tuple[Any, Any, Any, Any], sums: tuple[Any, ...], tie: float
) -> tuple[Any, Any]:
    """A reader's query (model/ranking.py's `query`): per part (CF, content, popularity) its mean, inverse spread
    and weight over the books the reader does not have (`seen`: unique rows), from the catalogue's column sums and
    Gram matrices (`sums`) less the reader's own books, and the query vector they make. `rows`: (item factors, item
    of book, content, popularity); a part whose vector (`user`, `unit`) is empty or whose weight is 0: zeros."""
    factors, item_of_book, content, popularity = rows
    cf_total, cf_gram, content_total, content_gram, popularity_sums = sums
    parts = np.zeros((3, 3))
    count = max(len(popularity) - len(seen), 1)
    frames, stack = np.empty((64, 3), dtype=np.int64), np.empty(64)
    if len(user) and weights[0]:
        own = item_dots(factors, item_of_book, seen, user)
        u = user.astype(np.float64)
        squares = np.dot(np.dot(u, cf_gram), u) - np.dot(own, own)
        _part(parts[0], np.dot(u, cf_total) - _pairwise(own, frames, stack), squares, count, weights[0])
    if len(unit) and weights[1]:
        own = dots(content, seen, unit)
        p = unit.astype(np.float64)
        squares = np.dot(np.dot(p, content_gram), p) - np.dot(own, own)
        _part(parts[1], np.dot(p, content_total) - _pairwise(own, frames, stack), squares, count, weights[1])
    if weights[2]:
        own = popularity[seen].astype(np.float64)
        squares = popularity_sums[1] - np.dot(own, own)
        _part(parts[2], popularity_sums[0] - _pairwise(own, frames, stack), squares, count, weights[2])
    k, d = factors.shape[1], content.shape[1]
    vector = np.zeros(k + d + 1, dtype=np.float32)
    if parts[0, 1] * parts[0, 2]:
        vector[:k] = user * np.float32(parts[0, 2] * parts[0, 1])
    if parts[1, 1] * parts[1, 2]:
        vector[k : k + d] = unit * np.float32(parts[1, 2] * parts[1, 1])
    vector[-1] = parts[2, 2] * parts[2, 1] + tie
    return parts, vector


@compiled
def _part(part: Any, total: float, squares: float, count: int, weight: float) -> None:
    """A part's (mean, inverse spread, weight): z = (x - mean) * inverse; inverse 0 where it has no spread."""
    mean = total / count
    variance = squares / count - mean * mean
    spread = np.sqrt(variance) if variance > 0 else 0.0
    part[0], part[1], part[2] = mean, 1.0 / spread if spread > 1e-9 else 0.0, weight
