"""Online metrics as the service shows them: read from the online record (storage/online.py) at most every few
seconds, however often ModelInfo, ListModels and the dashboard ask."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime

from recommender.model.online import OnlineSums
from recommender.storage.online import OnlineStore

CACHE_SECONDS = 5.0


class OnlineView:
    def __init__(self, store: OnlineStore, cache_seconds: float = CACHE_SECONDS) -> None:
        self.store = store
        self._cache_seconds = cache_seconds
        self._cache: dict[tuple[datetime | None, tuple[str, ...]], tuple[float, dict[str, OnlineSums]]] = {}

    async def sums(self, since: datetime | None = None, versions: Sequence[str] = ()) -> dict[str, OnlineSums]:
        """Each version's sums since `since` (all impressions kept when None), of `versions` (all when empty)."""
        key = (since, tuple(versions))
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        sums = await self.store.sums(since, versions)
        self._cache = {k: v for k, v in self._cache.items() if now - v[0] < self._cache_seconds}
        self._cache[key] = (now, sums)
        return sums
