"""What a restructuring must not move: NDCG@10 of one fixed configuration (the default training parameters, no
search) on the Goodreads sample and MovieLens, two split seeds each, with every part of the blend, and a digest of
every reader's top ten, exhaustive and through the catalogue index. Run it on two commits and compare the lines.

    python -m bench.parity [--seeds 1,2] [--data goodbooks,movielens]

Prints one line per data set and seed; writes nothing (the figures of a commit belong beside it, in a note).
"""

from __future__ import annotations

import hashlib

import numpy as np

from bench import convert
from recommender.model.evaluation import split
from recommender.model.growth import with_index
from recommender.model.params import IndexParams, SplitParams, TrainingParams
from recommender.model.ranking import Mode
from recommender.model.recommend import top_books
from recommender.training.trials import fit_and_measure

READERS = 2_000  # whose top ten the digest covers


def digest(lists: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for books in lists:
        h.update(np.asarray(books, dtype=np.int64).tobytes())
    return h.hexdigest()[:12]


def main() -> int:
    prepared, seeds = convert.split_arguments(__doc__)
    params = TrainingParams()
    for name, data, content in prepared:
        for seed in seeds:
            trial = fit_and_measure(split(data, SplitParams(seed=seed)), params, content, lambda: False, parts=True)
            parts = trial.parts or {}
            model = trial.model
            users = [int(u) for u in model.cf.user_ids[:READERS]]
            exhaustive = top_books(model, users, 10, [Mode.HYBRID])[Mode.HYBRID]
            indexed = with_index(model, IndexParams(min_books=0))
            through_index = top_books(indexed, users, 10, [Mode.HYBRID])[Mode.HYBRID]
            figures = " ".join(f"{part} {report.ndcg:.6f}/{report.ndcg_cold:.6f}" for part, report in parts.items())
            print(f"{name} seed {seed}: {figures}; top ten {digest(exhaustive)}, indexed {digest(through_index)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
