"""What a reader's book signals (their authors, the series they read in order) are worth: on the Goodreads sample
and MovieLens, two split seeds each, the default search with them against the same search without them, each
choice refitted on another split of the same data (split seed + 100) and measured there.

    python -m bench.book_signals [--seeds 1,2] [--data goodbooks,movielens]

Writes bench/results/book_signals.md and .csv. Columns: NDCG@10 of both (all readers, and readers cut to three
books against popularity); among readers whose training books hold volume n of a series whose volume n+1 they do
not have, the share whose ten books name n+1; a request's model maths (ten books with `because`, in process) with
the signals against the same version without them.
"""

from __future__ import annotations

import time

import numpy as np
from threadpoolctl import threadpool_limits

from bench import convert
from bench.harness import write_results
from recommender.model.catalogue import Catalogue
from recommender.model.content import ContentModel
from recommender.model.evaluation import Split, split
from recommender.model.hybrid import HybridModel
from recommender.model.params import SignalWeights, SplitParams, TrainingParams, TuningPolicy
from recommender.model.ranking import Mode
from recommender.model.readers import reader_of
from recommender.model.recommend import recommend, top_books
from recommender.training.trials import Trial, fit_and_measure, measure_parts
from recommender.training.tuning import Search, tune

OTHER_SPLIT = 100  # the split the choices are measured on: seed + this
TIMED_READERS = 1_000

COLUMNS = [
    "data", "seed", "signals chosen", "NDCG@10 with", "without", "with / without", "cold: with / popularity",
    "cold: without / popularity", "next volume named: with", "without", "readers", "maths with / without",
]  # fmt: skip


def next_volume_share(model: HybridModel, user_ids: list[int]) -> tuple[float, int]:
    """Among `user_ids` with volume n of a series and not n+1 (in the catalogue), the share whose top ten hold it."""
    signals = model.signals
    volume = {
        (int(s), float(p)): row
        for row, (s, p) in enumerate(zip(signals.series, signals.position, strict=True))
        if s >= 0
    }
    eligible, wanted = [], []
    for user in user_ids:
        seen = set(reader_of(model, user).seen.tolist())
        nexts = {
            volume[(int(signals.series[r]), signals.position[r] + 1)]
            for r in seen
            if signals.series[r] >= 0 and (int(signals.series[r]), signals.position[r] + 1) in volume
        } - seen
        if nexts:
            eligible.append(user)
            wanted.append(nexts)
    if not eligible:
        return float("nan"), 0
    found = top_books(model, eligible, 10, [Mode.HYBRID])[Mode.HYBRID]
    rows = [set(model.catalogue.positions(ids).tolist()) for ids in found]
    return float(np.mean([bool(w & r) for w, r in zip(wanted, rows, strict=True)])), len(eligible)


def maths_ratio(model: HybridModel) -> float:
    users = [int(u) for u in model.cf.user_ids[:TIMED_READERS]]
    plain = model.with_signals(SignalWeights()).with_ranker(None)
    timings = []
    with threadpool_limits(1):  # as a serving process runs
        for version in (model, plain, model, plain, model, plain):
            started = time.perf_counter()
            for user in users:
                recommend(version, user, 10)
            timings.append(time.perf_counter() - started)
    return min(timings[0::2]) / min(timings[1::2])


def searched(the_split: Split, content: tuple[Catalogue, ContentModel], seed: int, signals: bool) -> Trial:
    """The default search's choice on `the_split`: its configuration and, with signals, the trees it kept."""
    start = TrainingParams() if signals else TrainingParams(signals=SignalWeights())
    best, _tried = tune(the_split, start, content, Search.of(TuningPolicy(book_signals=signals), seed))
    return best


def refitted(chosen: Trial, other: Split, content: tuple[Catalogue, ContentModel]) -> HybridModel:
    """`chosen` fitted on `other`'s training part, with the trees it kept, as a release carries them."""
    return fit_and_measure(other, chosen.params, content, lambda: False).model.with_ranker(chosen.model.ranker)


def described(chosen: Trial) -> str:
    if chosen.model.signals.empty:
        return "none: no series, no author of two books"
    w = chosen.params.signals
    learned = ", learned stage" if chosen.model.ranker is not None else ""
    return f"author {w.author:g}, next {w.next:g}, held {w.held:g}{learned}"


def main() -> int:
    prepared, seeds = convert.split_arguments(__doc__)
    rows: list[list[object]] = []
    for name, data, content in prepared:
        for seed in seeds:
            the_split = split(data, SplitParams(seed=seed))
            chosen = {signals: searched(the_split, content, seed, signals) for signals in (True, False)}
            other = split(data, SplitParams(seed=seed + OTHER_SPLIT))
            fitted = {k: refitted(trial, other, content) for k, trial in chosen.items()}
            parts = {k: measure_parts(model, other) for k, model in fitted.items()}
            users = sorted(other.held_out)
            share = {k: next_volume_share(model, users) for k, model in fitted.items()}
            rows.append([
                name, seed, described(chosen[True]),
                f"{parts[True]['hybrid'].ndcg:.4f}", f"{parts[False]['hybrid'].ndcg:.4f}",
                f"{parts[True]['hybrid'].ndcg / parts[False]['hybrid'].ndcg:.3f}",
                f"{parts[True]['hybrid'].ndcg_cold / parts[True]['popularity'].ndcg_cold:.3f}",
                f"{parts[False]['hybrid'].ndcg_cold / parts[False]['popularity'].ndcg_cold:.3f}",
                f"{share[True][0]:.3f}", f"{share[False][0]:.3f}", share[True][1],
                f"{maths_ratio(fitted[True]):.2f}",
            ])  # fmt: skip
            print(rows[-1], flush=True)
    write_results(
        "book_signals",
        "A reader's book signals against the same search without them (bench/book_signals.py)",
        COLUMNS,
        rows,
        "Default search (RECOMMENDER_TUNING_TRIALS=20), once with RECOMMENDER_BOOK_SIGNALS=auto and once =off; each "
        f"choice refitted on split seed + {OTHER_SPLIT} and measured there. Cold: readers cut to 3 books. Next "
        "volume: readers of that split whose training books hold volume n of a series and not n+1. Maths: "
        f"`recommend` of ten books with `because` for {TIMED_READERS} readers, in process, best of three "
        "taken in turns.",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
