"""A visitor without an account, from three opened books, against the popular list: on the cold slice of the
evaluation split (readers cut to three books), those three books are the visitor's session; the model is trained
without these readers at all (a visitor is nobody it knows), and answers as `RecommendForSession` does (CF factors
folded in from the books, blended like a reader's). NDCG@10 against the readers' held-out books, beside the popular
list's, on the Goodreads sample and MovieLens, two split seeds each.

    python -m bench.session_quality

Writes bench/results/session_quality.md and .csv.
"""

from __future__ import annotations

import sys

import numpy as np

from bench import convert
from bench.harness import write_results
from recommender.model.answers import Request
from recommender.model.dataset import TrainingData
from recommender.model.evaluation import K, Split, evaluate, split
from recommender.model.fit import train
from recommender.model.params import SplitParams, TrainingParams
from recommender.model.recommend import recommend_many


def main() -> int:
    rows: list[list[object]] = []
    for name in ("goodbooks", "movielens"):
        data = convert.training_data(name)
        for seed in (1, 2):
            rows.append([name, seed, *measure(data, seed)])
            print(rows[-1], flush=True)
    write_results(
        "session_quality",
        "A visitor's recommendations from three opened books against the popular list (cold slice)",
        ["data", "split seed", "visitors", "NDCG@10 visitor", "NDCG@10 popular", "ratio"],
        rows,
        "The model is trained without the visitors; each visitor's session is their three training books; the "
        "popular list leaves out the books they opened, as the answer does.",
    )
    return 0


def measure(data: TrainingData, seed: int) -> list[object]:
    """Visitors, their NDCG@10, the popular list's, and the ratio, on one split."""
    the_split = split(data, SplitParams(seed=seed))
    train_part = the_split.train
    sessions: dict[int, list[int]] = {}
    for user, book in zip(train_part.user_ids.tolist(), train_part.book_ids.tolist(), strict=True):
        if user in the_split.cold:
            sessions.setdefault(user, []).append(book)
    model = train(train_part.subset(~np.isin(train_part.user_ids, list(the_split.cold))), TrainingParams())
    cold = Split(train_part, the_split.slice(cold=True), the_split.cold)
    answers = recommend_many(
        model, [Request(0, K, [(b, None) for b in sessions.get(u, [])]) for u in cold.held_out], explain=False
    )
    lists = {
        u: np.array([b.book_id for b in a.books], dtype=np.int32) for u, a in zip(cold.held_out, answers, strict=True)
    }
    popular_ids = [b.book_id for b in recommend_many(model, [Request(0, K + 3)], explain=False)[0].books]

    def popular_for(user: int, k: int) -> np.ndarray:
        opened = set(sessions.get(user, []))
        return np.array([b for b in popular_ids if b not in opened][:k], dtype=np.int32)

    visitor = evaluate(lambda u, _k: lists[u], cold, model.num_books).cold.ndcg_at_10
    by_popularity = evaluate(popular_for, cold, model.num_books).cold.ndcg_at_10
    return [len(lists), f"{visitor:.4f}", f"{by_popularity:.4f}", f"{visitor / by_popularity:.2f}x"]


if __name__ == "__main__":
    sys.exit(main())
