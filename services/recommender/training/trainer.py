"""One training run: snapshot the database, fit, write a new artifact version, make it current."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from recommender.model.cf import ALSParams
from recommender.model.dataset import TrainingData
from recommender.model.hybrid import HybridModel
from recommender.model.training import TrainingParams, train
from recommender.settings import Settings
from recommender.storage.artifacts import ArtifactStore
from recommender.storage.db import Database

log = logging.getLogger(__name__)


def training_params(settings: Settings) -> TrainingParams:
    return TrainingParams(
        als=ALSParams(
            factors=settings.als_factors,
            iterations=settings.als_iterations,
            regularization=settings.als_regularization,
            confidence=settings.als_confidence,
            threads=settings.train_threads,
        ),
        tfidf_max_features=settings.tfidf_max_features,
        alpha=settings.alpha,
    )


@dataclass(frozen=True)
class Trainer:
    dsn: str
    store: ArtifactStore
    params: TrainingParams
    keep_versions: int

    def __call__(self, should_stop: Callable[[], bool] = lambda: False) -> HybridModel:
        """Runs in a worker thread, with its own event loop and connection, so serving's loop never waits on it."""
        data = asyncio.run(self._snapshot())
        log.info("training on %d books and %d interactions", len(data.books), data.num_interactions)
        built = train(data, self.params, should_stop)
        self.store.save(built)
        # Serve what was written, so that what runs is what a restart (or another replica) would load.
        model = self.store.load(built.meta.version, self.params.alpha)
        self.store.set_current(model.meta.version)
        self.store.prune(self.keep_versions)
        log.info(
            "trained version %s in %.1f s: %d users, %d items, %d interactions, %d features",
            model.meta.version, model.meta.training_seconds, model.cf.num_users, model.cf.num_items,
            model.cf.nnz, model.content.feature_dim,
        )  # fmt: skip
        return model

    async def _snapshot(self) -> TrainingData:
        db = await Database.connect(self.dsn, max_size=1)
        async with db:
            return await db.load_training_data()
