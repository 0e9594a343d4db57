"""A fitted version as data: its catalogue, its fits (CF and content), the books' popularity, its index and what
it must forget, immutable, with what is derived from them once (the rows every ranking reads). What a version does
lives beside it, each in a module of its own: a reader's record and fold-in in model/readers.py, recommendations in
model/recommend.py, similar books in model/similar.py, "because you read" in model/explain.py, a version grown by
new books, erasures or an index in model/growth.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

import numpy as np

from recommender.model.catalogue import Catalogue
from recommender.model.cf import CFModel, FloatArray, IntArray
from recommender.model.content import ContentModel
from recommender.model.derived import Derived
from recommender.model.filters import author_key
from recommender.model.index import CatalogueIndex, Search
from recommender.model.learned import Ranker
from recommender.model.params import SignalWeights, TrainingParams
from recommender.model.ranking import Blend, BookRows
from recommender.model.signals import BookSignals


@dataclass(frozen=True)
class ModelMeta:
    version: str
    trained_at: datetime
    training_seconds: float
    params: TrainingParams = field(default_factory=TrainingParams)  # what training chose
    metrics: dict[str, float] = field(default_factory=dict)  # offline metrics of this configuration
    snapshot: str = ""  # the database snapshot its data was read in ("": unknown, anything may be newer)


@dataclass(frozen=True)
class HybridModel:
    meta: ModelMeta
    catalogue: Catalogue
    cf: CFModel
    content: ContentModel
    cf_positions: IntArray  # catalogue row of each CF item
    popularity: FloatArray  # per catalogue row, in [0, 1]
    index: CatalogueIndex | None = None  # of the trained catalogue (model/index.py); None: exhaustive ranking
    changed_since_index: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))  # book ids
    # Book and user ids whose trained data this version must not use (erased after its snapshot): `forgetting`.
    forgotten: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    forgotten_users: frozenset[int] = frozenset()
    ranker: Ranker | None = None  # the learned second stage over the reader's book signals (model/learned.py)
    # What is computed from the books and fits once, shared with copies that keep them (a re-blend, an index);
    # each copy then holds what it read as a cached property (a request reads them a dozen times).
    derived: Derived = field(default_factory=Derived, compare=False, repr=False)

    @classmethod
    def assemble(
        cls,
        meta: ModelMeta,
        catalogue: Catalogue,
        cf: CFModel,
        content: ContentModel,
        index: CatalogueIndex | None = None,
        changed_since_index: IntArray | None = None,
        forgotten: IntArray | None = None,
        forgotten_users: frozenset[int] = frozenset(),
        ranker: Ranker | None = None,
    ) -> HybridModel:
        cf_positions = catalogue.positions(cf.item_ids)
        counts = np.zeros(len(catalogue.book_ids), dtype=np.float32)
        liked = cf.user_items.copy()
        liked.data = (liked.data > 0).astype(np.float32)
        counts[cf_positions] = np.asarray(liked.sum(axis=0)).ravel()  # users who liked each book
        none = np.zeros(0, dtype=np.int32)
        forgotten = none if forgotten is None else forgotten
        counts[catalogue.positions(forgotten)] = 0.0
        top = counts.max() if len(counts) else 0.0
        popularity = counts / top if top > 0 else counts
        changed = none if changed_since_index is None else changed_since_index
        return cls(
            meta, catalogue, cf, content, cf_positions, popularity, index, changed, forgotten, forgotten_users, ranker
        )

    @cached_property
    def search(self) -> Search | None:
        """The index's search over this catalogue (None: the exhaustive ranking)."""
        if self.index is None:
            return None
        return Search.over(self.index, self.catalogue.book_ids, self.changed_since_index, self.meta.params.index)

    @property
    def alpha(self) -> float:
        return self.meta.params.alpha

    @cached_property
    def blend(self) -> Blend:
        params = self.meta.params
        return Blend(params.alpha, params.popularity_prior, params.cf_prior)

    def with_blend(
        self, alpha: float | None = None, popularity_prior: float | None = None, cf_prior: float | None = None
    ) -> HybridModel:
        """The same fits blended otherwise (no refit)."""
        now = self.meta.params
        params = dataclasses.replace(
            now,
            alpha=now.alpha if alpha is None else alpha,
            popularity_prior=now.popularity_prior if popularity_prior is None else popularity_prior,
            cf_prior=now.cf_prior if cf_prior is None else cf_prior,
        )
        return self._with_params(params)

    def with_signals(self, weights: SignalWeights) -> HybridModel:
        """The same fits with the reader's book signals weighed otherwise (no refit)."""
        return self._with_params(dataclasses.replace(self.meta.params, signals=weights))

    def with_ranker(self, ranker: Ranker | None) -> HybridModel:
        """The same fits with `ranker` as their second stage (None: the blend and the weighed signals), their
        params saying so."""
        learned_from = None if ranker is None else ranker.least_history
        signals = dataclasses.replace(self.meta.params.signals, learned_from=learned_from)
        return dataclasses.replace(self.with_signals(signals), ranker=ranker)

    def _with_params(self, params: TrainingParams) -> HybridModel:
        return dataclasses.replace(self, meta=dataclasses.replace(self.meta, params=params))  # `derived` shared

    @property
    def num_books(self) -> int:
        return len(self.catalogue.book_ids)

    @cached_property
    def item_of_position(self) -> IntArray:
        """CF item index of each catalogue row; -1 for books CF does not have (or forgotten)."""
        return self.derived.of(self._basis, "item_of_position", self._items)

    def _items(self) -> IntArray:
        items = np.full(self.num_books, -1, dtype=np.int32)
        items[self.cf_positions] = np.arange(len(self.cf_positions), dtype=np.int32)
        items[self.catalogue.positions(self.forgotten)] = -1
        return items

    @property
    def _basis(self) -> tuple[object, ...]:
        """What `derived` is computed from."""
        return (self.catalogue, self.cf, self.content, self.popularity, self.forgotten)

    @cached_property
    def similar_rows(self) -> BookRows:
        return self.derived.of(self._basis, "similar_rows", self.rows.unit)

    @cached_property
    def rows(self) -> BookRows:
        """Every book's row and the catalogue statistics: what the ranking is made of."""
        return self.derived.of(self._basis, "rows", self._rows)

    def _rows(self) -> BookRows:
        return BookRows(
            self.cf.item_factors,
            self.item_of_position,
            self.content.vectors,
            self.popularity,
        )

    @cached_property
    def signals(self) -> BookSignals:
        """Each book's authors and series, and the inverted lists back to books (model/signals.py)."""
        return self.derived.of(self._basis, "signals", self._signals)

    def _signals(self) -> BookSignals:
        return BookSignals.of(self.catalogue.series, self.catalogue.authors)

    @cached_property
    def author_codes(self) -> IntArray:
        """Per catalogue position, a code of its first author (model/filters.py's `author_key`)."""
        return self.derived.of(self._basis, "author_codes", self._author_codes)

    def _author_codes(self) -> IntArray:
        _keys, codes = np.unique([author_key(a) for a in self.catalogue.authors], return_inverse=True)
        return codes.astype(np.int32)
