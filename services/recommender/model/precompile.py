"""Compile the model's loops (model/compiled.py, model/signal_loops.py, model/signal_sources.py,
model/explain_loops.py, model/scan.py, model/trees.py) into numba's cache before the service needs them: a small
catalogue with series and shared authors is fitted and every answer path of it run once. A process that finds
nothing cached compiles on first use instead, 20 to 60 seconds on two cores, while its first version is warmed
(model/warm.py), before it serves.

    python -m recommender.model.precompile

numba keeps what it compiles in `__pycache__` beside the modules where that folder is writable, else under the
user's cache folder, or in NUMBA_CACHE_DIR when set (the Docker image sets it).
"""

from __future__ import annotations

import time

from recommender.model.dataset import Book, Interaction, TrainingData
from recommender.model.fit import train
from recommender.model.learned import Ranker
from recommender.model.learned_loops import FEATURES
from recommender.model.params import ALSParams, TrainingParams
from recommender.model.readers import reader_of
from recommender.model.recommend import query_for, recommend
from recommender.model.shortlist import shortlists
from recommender.model.trees import Trees
from recommender.model.warm import warm


def precompile() -> float:
    """Every loop compiled (or read from the cache); the seconds it took."""
    started = time.perf_counter()
    books = [
        Book(
            i,
            f"Volume {i} (The Saga, #{i})" if i <= 4 else f"Tale {i}",
            "A. Writer" if i % 2 else "B. Writer, C. Writer",
        )
        for i in range(1, 13)
    ]
    read = [Interaction(user, book, 4.0) for user in range(1, 9) for book in range(1, 13) if (user + book) % 3]
    params = TrainingParams(als=ALSParams(factors=4, iterations=2), tfidf_max_features=50)
    model = train(TrainingData.from_interactions(books, read), params)
    warm(model)
    recommend(model, user_id=1, limit=5, events=[(1, 5.0), (2, 5.0), (5, 4.0)])  # a started series, fresh events
    recommend(model.with_ranker(Ranker(_STUMP)), user_id=1, limit=5)  # the learned stage (model/learned.py)
    q = query_for(model, reader_of(model, 1))
    shortlists(model.rows, [q], [5], [None], scanned=True)  # the scan, whatever this tiny catalogue's bound
    return time.perf_counter() - started


# One split on the blended score: trees enough to compile the learned stage's loops.
_STUMP = Trees.stump(0, 0.0, 0.0, 1.0, len(FEATURES))


if __name__ == "__main__":
    print(f"the model's loops compiled in {precompile():.1f} s")
