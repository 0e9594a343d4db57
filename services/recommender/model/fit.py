"""Fits both models on one snapshot and assembles the hybrid model."""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from recommender.model import cf, content
from recommender.model.catalogue import Catalogue
from recommender.model.dataset import Book, TrainingData
from recommender.model.growth import with_index
from recommender.model.hybrid import HybridModel, ModelMeta
from recommender.model.params import TrainingParams

log = logging.getLogger(__name__)


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
    looks: Mapping[int, Callable[[HybridModel], None]] | None = None,
) -> HybridModel:
    """The hybrid model of `data`; `looks` are handed the model as it stands after that many ALS iterations (not
    indexed), and may raise to stop the fit."""
    started, started_at = time.perf_counter(), datetime.now(UTC)

    def check(_iteration: int = 0) -> None:
        if should_stop():
            raise TrainingCancelled("training cancelled")

    catalogue, content_model = fitted_content or fit_content(data.books, params)
    check()
    meta = ModelMeta(new_version(started_at), started_at, 0.0, params)

    def assembled(look: Callable[[HybridModel], None]) -> Callable[[cf.CFModel], None]:
        return lambda fitted: look(HybridModel.assemble(meta, catalogue, fitted, content_model))

    cf_looks = {iteration: assembled(look) for iteration, look in (looks or {}).items()}
    cf_model = cf.fit(data.only_books(catalogue.book_ids), params.als, on_iteration=check, looks=cf_looks)
    model = HybridModel.assemble(meta, catalogue, cf_model, content_model)
    check()
    indexing = time.perf_counter()
    model = with_index(model, params.index)
    if model.index is not None:
        log.info("indexed %d books in %.1f s", model.num_books, time.perf_counter() - indexing)
    meta = dataclasses.replace(model.meta, training_seconds=time.perf_counter() - started)
    return dataclasses.replace(model, meta=meta)
