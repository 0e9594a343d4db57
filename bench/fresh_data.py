"""What fresh data costs a request: the fold-in of a user with interactions newer than the model, next to the
plain request path, and similar books, on the model of the issue's catalogue (10,000 books, 50,000 users, 1M
interactions).

    python -m bench.fresh_data        (trains that model first when bench/.work has none)
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from threadpoolctl import threadpool_limits

from bench.harness import MEDIUM, WORK, service, write_results
from recommender.model.hybrid import HybridModel
from recommender.model.readers import reader_of
from recommender.model.recommend import recommend
from recommender.model.similar import similar_to
from recommender.model.warm import warm
from recommender.storage.artifacts import LocalArtifactStore

CALLS = 2000


def per_call_ms(call: Callable[[int], object], users: list[int]) -> tuple[float, float]:
    """Median and p99 of one call, in milliseconds."""
    times = []
    for user in users:
        started = time.perf_counter()
        call(user)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99)]


def newest(store: LocalArtifactStore) -> HybridModel | None:
    versions = store.complete_versions()
    return store.read(versions[0]) if versions else None


def main() -> None:
    store = LocalArtifactStore(WORK / MEDIUM.name / "artifacts")
    model = newest(store)
    if model is None:
        with service(MEDIUM):
            pass
        model = newest(store)
    assert model is not None
    threadpool_limits(1, user_api="blas")  # as the service serves
    warm(model)
    rng = random.Random(0)
    users = [int(model.cf.user_ids[rng.randrange(model.cf.num_users)]) for _ in range(CALLS)]
    new_book = int(model.catalogue.book_ids[0])

    def events(user: int) -> list[tuple[int, float | None]]:
        row = model.cf.user_row(user)
        assert row is not None
        positions, _weights = model.cf.interactions(row)
        books = model.catalogue.book_ids[model.cf_positions[positions]]
        return [*((int(b), None) for b in books), (new_book, 5.0)]  # one more book than the model knows

    histories = {user: events(user) for user in set(users)}
    rows: list[list[object]] = []
    for name, call in (
        ("recommend, the model's record", lambda u: recommend(model, u, 10)),
        ("recommend, folded in from a newer history", lambda u: recommend(model, u, 10, histories[u])),
        ("fold-in alone", lambda u: _fold_in(model, histories[u], u)),
        ("similar books", lambda u: similar_to(model, int(model.catalogue.book_ids[u % model.num_books]), 10)),
    ):
        p50, p99 = per_call_ms(call, users)
        rows.append([name, p50, p99])
    mean_history = sum(len(h) for h in histories.values()) / len(histories)
    write_results(
        "fresh_data",
        "Fresh data: the cost of a fold-in per request",
        ["call", "p50 ms", "p99 ms"],
        rows,
        f"{CALLS} calls over random known users of the {MEDIUM.name} model ({model.cf.item_factors.shape[1]} "
        f"factors, {mean_history:.0f} books per history on average), one BLAS thread, in-process (no gRPC). A "
        "folded-in user's history is read from PostgreSQL once (an indexed read, about 1 ms) and cached until "
        "the user writes again.",
    )


def _fold_in(model: HybridModel, history: list[tuple[int, float | None]], user: int) -> None:
    reader_of(model, user, history)


if __name__ == "__main__":
    main()
