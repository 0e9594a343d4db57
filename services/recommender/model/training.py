"""Fits both models on one snapshot and assembles the hybrid model."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from recommender.model import cf, content
from recommender.model.dataset import TrainingData
from recommender.model.hybrid import Catalogue, HybridModel, ModelMeta


@dataclass(frozen=True)
class TrainingParams:
    als: cf.ALSParams = field(default_factory=cf.ALSParams)
    tfidf_max_features: int = 10_000
    alpha: float = 0.6


class TrainingCancelled(Exception):
    """Training stopped because the service is shutting down."""


def new_version(now: datetime) -> str:
    """Sortable by time; the random tail keeps versions from two processes apart."""
    return now.strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


def train(data: TrainingData, params: TrainingParams, should_stop: Callable[[], bool] = lambda: False) -> HybridModel:
    started, started_at = time.perf_counter(), datetime.now(UTC)

    def check(_iteration: int = 0) -> None:
        if should_stop():
            raise TrainingCancelled("training cancelled")

    books = sorted(data.books, key=lambda b: b.book_id)
    catalogue = Catalogue.from_books(books)
    content_model = content.fit(books, params.tfidf_max_features)
    check()
    cf_model = cf.fit(data.only_books(catalogue.book_ids), params.als, on_iteration=check)
    meta = ModelMeta(new_version(started_at), started_at, time.perf_counter() - started)
    return HybridModel.assemble(meta, params.alpha, catalogue, cf_model, content_model)
