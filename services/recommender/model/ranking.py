"""Ranking many users at once, for evaluation: every book scored for a batch of users in a few matrix products,
blended with the request path's `Blend`, and ranked by the blend or by one of its parts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from recommender.model.cf import FloatArray, IntArray
from recommender.model.hybrid import TIE_BREAK, History, HybridModel, top_k_rows


class Mode(StrEnum):
    """What to rank by: the served blend, or one of its parts (CF applies to users it has)."""

    HYBRID = "hybrid"
    CF = "cf"
    CONTENT = "content"
    POPULAR = "popular"


@dataclass(frozen=True)
class Scores:
    """Per user (rows) and catalogue book (columns)."""

    blended: FloatArray
    cf: FloatArray
    content: FloatArray
    candidates: npt.NDArray[np.bool_]  # books the user does not have


def score(model: HybridModel, histories: Sequence[History]) -> Scores:
    """Standardised CF and content scores of every book for each user, and their blend."""
    n = model.num_books
    candidates = np.ones((len(histories), n), dtype=bool)
    for i, h in enumerate(histories):
        candidates[i, h.seen] = False
    count = np.maximum(candidates.sum(axis=1, keepdims=True), 1).astype(np.float32)
    content = _standardise(model.content_raw(histories), candidates, count)
    cf = np.zeros((len(histories), n), dtype=np.float32)
    vectors = [h.user_vector(model.cf) for h in histories]
    rows = [i for i, v in enumerate(vectors) if v is not None]
    if rows and model.cf.num_items:
        raw = model.cf_raw(np.stack([v for v in vectors if v is not None]))
        cf[rows] = _standardise(raw, candidates[rows], count[rows])
    weights = model.blend.weights([h.liked for h in histories], [v is not None for v in vectors])
    blended = weights.cf[:, None] * cf + weights.content[:, None] * content
    if weights.popular.any():
        popular = _standardise(np.broadcast_to(model.popularity, (len(histories), n)), candidates, count)
        blended = blended + weights.popular[:, None] * popular
    has_history = np.array([len(h.seen) > 0 for h in histories], dtype=bool)[:, None]
    served = np.where(has_history, blended, model.popularity).astype(np.float32)
    return Scores(served, cf, content, candidates)


def top(model: HybridModel, scores: Scores, k: int, mode: Mode = Mode.HYBRID) -> list[IntArray]:
    """Each user's k best candidate catalogue positions by `mode`, best first; popularity breaks ties."""
    if mode is Mode.POPULAR:  # one order for everybody: each user's first k books they do not have
        order = np.argsort(-model.popularity, kind="stable").astype(np.int32)
        return [order[c[order]][:k] for c in scores.candidates]
    by = {Mode.HYBRID: scores.blended, Mode.CF: scores.cf, Mode.CONTENT: scores.content}[mode]
    ranking = np.where(scores.candidates, by + TIE_BREAK * model.popularity, -np.inf).astype(np.float32)
    return top_k_rows(ranking, [min(k, int(c.sum())) for c in scores.candidates])


def rank_users(
    model: HybridModel, user_ids: Sequence[int], k: int, modes: Sequence[Mode] = (Mode.HYBRID,), batch: int = 256
) -> dict[Mode, list[IntArray]]:
    """The top-k book ids of many users at once, by each of `modes`."""
    ranked: dict[Mode, list[IntArray]] = {mode: [] for mode in modes}
    for start in range(0, len(user_ids), batch):
        scores = score(model, [model.history(user) for user in user_ids[start : start + batch]])
        for mode in modes:
            ranked[mode] += [model.catalogue.book_ids[p] for p in top(model, scores, k, mode)]
    return ranked


def _standardise(scores: FloatArray, candidates: npt.NDArray[np.bool_], count: FloatArray) -> FloatArray:
    """Row-wise z-scores over each row's candidates (`count` of them; 0 where a row has no spread). Sums in float64,
    as the request path's standardisation does, from one masked copy of the scores."""
    masked = np.where(candidates, scores, np.float32(0.0))
    mean = masked.sum(axis=1, dtype=np.float64)[:, None] / count
    squares = np.einsum("ij,ij->i", masked, masked, dtype=np.float64)[:, None] / count
    spread = np.sqrt(np.maximum(squares - mean**2, 0.0))
    inverse = np.where(spread > 1e-9, 1.0 / np.where(spread > 1e-9, spread, 1.0), 0.0)
    return ((scores - mean.astype(np.float32)) * inverse.astype(np.float32)).astype(np.float32)
