"""Fits both models on one snapshot and assembles the hybrid model."""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from recommender.model import cf, content
from recommender.model.dataset import Book, TrainingData
from recommender.model.hybrid import Catalogue, HybridModel, ModelMeta


@dataclass(frozen=True)
class TrainingParams:
    als: cf.ALSParams = field(default_factory=cf.ALSParams)
    tfidf_max_features: int = 10_000
    alpha: float = 0.6
    popularity_prior: float = 10.0

    def as_dict(self) -> dict[str, Any]:
        """The knobs that shape the model, flat (what the registry stores and tuning starts from)."""
        als = dataclasses.asdict(self.als)
        del als["threads"], als["device"]  # how fast, not what
        top = {"tfidf_max_features": self.tfidf_max_features, "alpha": self.alpha}
        return {**als, **top, "popularity_prior": self.popularity_prior}

    def with_values(self, values: dict[str, Any]) -> TrainingParams:
        """These params with the known keys of `values` (as `as_dict` writes them) replaced."""
        als_fields = {f.name for f in dataclasses.fields(cf.ALSParams)} - {"threads", "device"}
        als = dataclasses.replace(self.als, **{k: v for k, v in values.items() if k in als_fields})
        top = {k: v for k, v in values.items() if k in ("tfidf_max_features", "alpha", "popularity_prior")}
        return dataclasses.replace(self, als=als, **top)


class TrainingCancelled(Exception):
    """Training stopped because the service is shutting down."""


def new_version(now: datetime) -> str:
    """Sortable by time; the random tail keeps versions from two processes apart."""
    return now.strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


def fit_content(books: list[Book], params: TrainingParams) -> tuple[Catalogue, content.ContentModel]:
    """The catalogue and its content model: they depend on the books only, so one fit serves many CF fits."""
    ordered = sorted(books, key=lambda b: b.book_id)
    return Catalogue.from_books(ordered), content.fit(ordered, params.tfidf_max_features)


def train(
    data: TrainingData,
    params: TrainingParams,
    should_stop: Callable[[], bool] = lambda: False,
    fitted_content: tuple[Catalogue, content.ContentModel] | None = None,
) -> HybridModel:
    started, started_at = time.perf_counter(), datetime.now(UTC)

    def check(_iteration: int = 0) -> None:
        if should_stop():
            raise TrainingCancelled("training cancelled")

    catalogue, content_model = fitted_content or fit_content(data.books, params)
    check()
    cf_model = cf.fit(data.only_books(catalogue.book_ids), params.als, on_iteration=check)
    meta = ModelMeta(new_version(started_at), started_at, time.perf_counter() - started, params.as_dict())
    return HybridModel.assemble(meta, params.alpha, catalogue, cf_model, content_model, params.popularity_prior)
