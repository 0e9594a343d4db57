"""What "because you read ..." costs a request: `recommend` with and without its explanations, in-process, on the
Goodreads sample (10,000 books) with the default configuration, for readers the model knows.

    python -m bench.explain_cost        (converts ../shared/data's Goodreads sample first)
"""

from __future__ import annotations

import random
import time

from threadpoolctl import threadpool_limits

from bench import convert
from bench.harness import write_results
from recommender.model.fit import train
from recommender.model.hybrid import HybridModel
from recommender.model.params import TrainingParams
from recommender.model.recommend import recommend
from recommender.model.warm import warm

CALLS = 3000


def timed(model: HybridModel, users: list[int], explain: bool) -> tuple[float, float]:
    """p50 and p99 of one call, in milliseconds."""
    times = []
    for user in users:
        started = time.perf_counter()
        recommend(model, user, 10, explain=explain)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99)]


def main() -> None:
    model = train(convert.training_data("goodbooks"), TrainingParams())
    threadpool_limits(1, user_api="blas")  # as the service serves
    warm(model)
    rng = random.Random(0)
    users = [int(model.cf.user_ids[rng.randrange(model.cf.num_users)]) for _ in range(CALLS)]
    plain, explained = timed(model, users, False), timed(model, users, True)
    rows: list[list[object]] = [
        ["recommend, 10 books", round(plain[0], 3), round(plain[1], 3)],
        ["recommend, 10 books with because", round(explained[0], 3), round(explained[1], 3)],
        ["because alone", round(explained[0] - plain[0], 3), round(explained[1] - plain[1], 3)],
    ]
    write_results(
        "explain_cost",
        "What 'because you read ...' costs a request (Goodreads sample, 10,000 books, one BLAS thread)",
        ["call", "p50 ms", "p99 ms"],
        rows,
        notes=f"{CALLS} calls for random readers the model knows ({model.cf.num_users} readers, "
        f"{model.cf.nnz} ratings, {model.cf.item_factors.shape[1]} factors).",
    )


if __name__ == "__main__":
    main()
