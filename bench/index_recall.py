"""The catalogue index on real data: recall@10 of what it finds against the exact ranking (every book scored in
float64), for readers (`Recommend`), for readers with a predicate that allows a quarter of the catalogue, for
content-only readers (the blend's alpha at 0) and for books (`SimilarBooks`), on the Goodreads sample and on
MovieLens, with the index forced on (`min_books=0`: these catalogues are below the default size) and the default
search settings; two training seeds each.

    python -m bench.index_recall [--readers 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np

from bench import convert
from bench.harness import write_results
from recommender.model.fit import train
from recommender.model.hybrid import HybridModel
from recommender.model.params import ALSParams, IndexParams, TrainingParams
from recommender.model.ranking import scored
from recommender.model.readers import reader_of
from recommender.model.recommend import query_for
from recommender.model.similar import similar_to

COLUMNS = ["data", "seed", "books", "readers", "filtered (25%)", "content only", "similar books"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readers", type=int, default=1000)
    args = parser.parse_args()
    rows: list[list[object]] = []
    for dataset in ("goodbooks", "movielens"):
        data = convert.training_data(dataset)
        for seed in (1, 2):
            params = TrainingParams(als=ALSParams(random_state=seed), index=IndexParams(min_books=0))
            model = train(data, params)
            rows.append([dataset, seed, model.num_books, *recalls(model, args.readers, seed)])
            print(rows[-1], flush=True)
    write_results(
        "index_recall",
        "Recall@10 of the catalogue index against the exact ranking, on real data (index forced on)",
        COLUMNS,
        rows,
        "Filtered: a random quarter of the catalogue allowed. Similar books: against the exhaustive product.",
    )
    return 0


def recalls(model: HybridModel, readers: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    users = [int(u) for u in rng.choice(model.cf.user_ids, min(readers, model.cf.num_users), replace=False)]
    allowed = rng.random(model.num_books) < 0.25
    content_only = model.with_blend(alpha=0.0)
    books = [int(b) for b in rng.choice(model.catalogue.book_ids[model.cf_positions], min(readers, 500), replace=False)]
    return [
        f"{reader_recall(model, users):.4f}",
        f"{reader_recall(model, users, allowed):.4f}",
        f"{reader_recall(content_only, users):.4f}",
        f"{similar_recall(model, books):.4f}",
    ]


def reader_recall(model: HybridModel, users: list[int], allowed: np.ndarray | None = None) -> float:
    search = model.search
    assert search is not None
    hits = 0
    for user in users:
        q = query_for(model, reader_of(model, user))
        found = search.ranked(model.rows, q, 10, allowed=allowed).positions
        candidates = np.setdiff1d(np.arange(model.num_books), q.seen)
        if allowed is not None:
            candidates = candidates[allowed[candidates]]
        truth = scored(model.rows, q, candidates.astype(np.int32)).positions[:10]
        hits += len(set(found.tolist()) & set(truth.tolist()))
    return hits / (10 * len(users))


def similar_recall(model: HybridModel, books: list[int]) -> float:
    exhaustive = dataclasses.replace(model, index=None)
    hits = 0
    for book in books:
        truth = {b.book_id for b in similar_to(exhaustive, book, 10) or []}
        hits += len(truth & {b.book_id for b in similar_to(model, book, 10) or []})
    return hits / (10 * len(books))


if __name__ == "__main__":
    sys.exit(main())
