"""What `because` computes per answer, compiled like the model's other loops (model/compiled.py): CF's explanation
(Woodbury's solve through the whitened factors, or W_u solved directly), and what each of the reader's books gives
each returned book through the blend. A request's explanation is a dozen small products and solves, whose NumPy
calls cost more than their arithmetic."""

from __future__ import annotations

from typing import Any

import numpy as np

from recommender.model.compiled import compiled, top_columns


@compiled
def through_cf(whitened: Any, factors: Any, system: Any, items: Any, extra: Any, targets: Any) -> Any:
    """Y_u W_u^-1 Y_t' (items x targets), W_u = A + Y_u' (C_u - I) Y_u (model/cf.py's `explain`): by `woodbury` for
    a history shorter than the factors (`whitened` then holds every item's row), else solved directly from
    A = Y'Y + lambda I (`system`). `extra`: per item, its confidence less one."""
    if len(items) < factors.shape[1]:
        return woodbury(whitened, items, extra, targets)
    history = factors[items].astype(np.float64)
    own = system + (history.T * extra) @ history
    return history @ np.linalg.solve(own, np.ascontiguousarray(factors[targets].T).astype(np.float64))


@compiled
def woodbury(whitened: Any, items: Any, extra: Any, targets: Any) -> Any:
    """Y_u W_u^-1 Y_t' (items x targets) from the whitened factors R = Y L^-T (model/cf.py's `explain`): the h x h
    system I + (R_u R_u') (C_u - I) solved for R_u R_t'. `extra`: per item, its confidence less one."""
    mine = whitened[items].astype(np.float64)
    theirs = whitened[targets].astype(np.float64)
    inner = mine @ mine.T
    for i in range(len(items)):
        for j in range(len(items)):
            inner[i, j] *= extra[j]
        inner[i, i] += 1.0
    return np.linalg.solve(inner, mine @ theirs.T)


@compiled
def cf_gifts(
    solve: tuple[Any, Any, Any],
    item_of_book: Any,
    mine: Any,
    weights: Any,
    positions: Any,
    confidence: float,
    scale: float,
) -> Any:
    """What each of the reader's liked books (catalogue rows `mine`, with their `weights`) gives each book at
    `positions` through CF (books x mine, float32): implicit's explanation (model/cf.py's `explain`, by
    `through_cf`; `solve`: its whitened factors, factors and system) times the blend's `scale`; 0 where either book
    has no CF item."""
    gifts = np.zeros((len(positions), len(mine)), dtype=np.float32)
    known = np.flatnonzero(item_of_book[mine] >= 0)
    reachable = np.flatnonzero(item_of_book[positions] >= 0)
    if len(known) == 0 or len(reachable) == 0:
        return gifts
    given = confidence * weights[known].astype(np.float64)
    items, targets = item_of_book[mine[known]], item_of_book[positions[reachable]]
    weighted = through_cf(*solve, items, np.abs(given) - 1.0, targets)
    for a in range(len(known)):
        kept = max(given[a], 0.0)
        for b in range(len(reachable)):
            gifts[reachable[b], known[a]] = np.float32(weighted[a, b] * kept) * np.float32(scale)
    return gifts


@compiled
def blend_reasons(
    positions: Any, mine: Any, weights: Any, vectors: Any, content_scale: float, by_cf: Any, shown: int
) -> tuple[Any, Any, Any]:
    """For each returned book (catalogue `positions`), the `shown` of the reader's liked books (`mine`, with their
    `weights`) that give its score most, each book's gift its CF part (`by_cf`, books x mine, in the z-score's
    units and the blend's weight) and its content part (its share of the profile's cosine similarity, likewise),
    when positive, added. Returns per book: the columns of `mine` best first (ties: the earlier), their shares of
    everything the reader's books gave it, and whether CF gave the larger part."""
    profile = weights @ vectors[mine]
    norm = np.float64(np.sqrt(profile @ profile))
    by_content = vectors[positions] @ vectors[mine].T
    factor = np.float32(content_scale / (norm if norm > 0 else 1.0))
    total = np.empty_like(by_content)
    for j in range(len(mine)):
        gift = weights[j] * factor
        for i in range(len(positions)):
            by_content[i, j] *= gift
            total[i, j] = max(by_cf[i, j], np.float32(0.0)) + max(by_content[i, j], np.float32(0.0))
    best = top_columns(total, shown)
    shares = np.zeros(best.shape)
    by = np.zeros(best.shape, dtype=np.bool_)
    for i in range(len(positions)):
        whole = np.float64(0.0)
        for j in range(len(mine)):
            whole += total[i, j]
        for s in range(best.shape[1]):
            shares[i, s] = total[i, best[i, s]] / whole if whole > 0 else 0.0
            by[i, s] = by_cf[i, best[i, s]] >= by_content[i, best[i, s]]
    return best, shares, by
