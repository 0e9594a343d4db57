"""The compressed scan a single request ranks with against the float32 product a batch uses, and Faiss's scalar
quantisers: `.venv/bin/python -m bench.scan_compression [--factors 400] [--readers 1000]`.

On the Goodreads sample and MovieLens, two split seeds each, a model fitted at `--factors`; for `--readers`
readers, unfiltered and with a filter that allows half of the books: the exact answer (every book the reader may
get scored in float64), then each first stage's shortlist re-scored exactly the same way: the 8-bit codes with
their bound for every reader (model/scan.py), what a single request is served (the codes where their bound is at
most model/shortlist.py's WIDEST_SCAN, else the float32 product, which also replaces a scan whose shortlist holds
more than MOST_REFINED of the books), the float32 product (a batch's), Faiss's scalar quantiser at 8 bits per entry
(`QT_8bit`) and at half precision (`QT_fp16`), each Faiss stage handing on twice the answer's books. Recall@10
against the exact answer, the books re-scored (median), the first stage's mean µs per reader (one thread, the rows
cold in cache before each stage, as a serving process with other work meets them; each reader through every stage
in turn, the order rotating) and the bytes per book it reads. Writes bench/results/scan_compression.*.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable

import faiss
import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from bench import convert
from bench.harness import write_results
from recommender.model.evaluation import split
from recommender.model.fit import fit_content
from recommender.model.hybrid import HybridModel
from recommender.model.params import ALSParams, SplitParams, TrainingParams
from recommender.model.ranking import Query, scored
from recommender.model.readers import reader_of
from recommender.model.recommend import query_for
from recommender.model.shortlist import shortlists
from recommender.training.trials import fit_and_measure

IntArray = npt.NDArray[np.int32]
FLUSH = np.ones(8_000_000)  # 64 MB, read before each stage: larger than the last-level cache
LIMIT = 10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", type=int, default=400)
    parser.add_argument("--readers", type=int, default=1000)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    threadpool_limits(1, "blas")
    rows: list[list[object]] = []
    for name in ("goodbooks", "movielens"):
        data = convert.training_data(name)
        params = dataclasses.replace(TrainingParams(), als=ALSParams(factors=args.factors, iterations=10, threads=2))
        content = fit_content(data.books, params)
        for seed in (1, 2):
            model = fit_and_measure(split(data, SplitParams(seed=seed)), params, content, lambda: False).model
            rows += compared(name, seed, model, args.readers)
    write_results(
        "scan_compression",
        "The compressed scan against the float32 product and Faiss's (bench/scan_compression.py)",
        ["data", "seed", "filter", "first stage", "bytes per book", "recall@10", "books re-scored", "us per reader"],
        rows,
        f"{args.factors} factors; readers drawn at random; the served stages hand on their shortlists, Faiss's "
        f"scans their best {2 * LIMIT}, to the exact scores (the median count of those, books re-scored). "
        "Recall@10 against every allowed book scored in float64. One thread; 64 MB read before each stage so "
        "that the rows come from memory; µs: the mean over readers, each reader through every stage in turn.",
    )
    return 0


def compared(name: str, seed: int, model: HybridModel, readers: int) -> list[list[object]]:
    rng = np.random.default_rng(seed)
    users = rng.choice(model.cf.user_ids, size=min(readers, model.cf.num_users), replace=False)
    queries = [query_for(model, reader_of(model, int(user))) for user in users]
    half = rng.random(model.num_books) < 0.5
    columns = model.rows.columns
    found: list[list[object]] = []
    for label, mask in (("none", None), ("half the books", half)):
        exact = [_every_book(model, q, mask) for q in queries]
        stages: dict[str, tuple[int, Callable[[Query], IntArray]]] = {
            "8-bit codes with their bound, every reader": (columns.shape[0], _served_stage(model, mask, True)),
            "served alone: the codes where their bound is narrow": (columns.shape[0], _served_stage(model, mask)),
            "float32 product (a batch's)": (4 * columns.shape[0], _served_stage(model, mask, False)),
        }
        for quantiser, code in (("8-bit scalar quantiser", "QT_8bit"), ("half precision", "QT_fp16")):
            index = faiss.IndexScalarQuantizer(
                columns.shape[0], getattr(faiss.ScalarQuantizer, code), faiss.METRIC_INNER_PRODUCT
            )
            vectors = np.ascontiguousarray(columns.T)
            index.train(vectors)
            index.add(vectors)
            stages[f"Faiss {quantiser}"] = (index.sa_code_size(), _faiss_stage(index, mask))
        measured = _measured(model, queries, exact, [first for _size, first in stages.values()])
        for (stage, (size, _first)), (recall, rescored, micros) in zip(stages.items(), measured, strict=True):
            found.append([name, seed, label, stage, size, f"{recall:.4f}", rescored, round(micros)])
            print(found[-1], flush=True)
    return found


def _every_book(model: HybridModel, q: Query, mask: npt.NDArray[np.bool_] | None) -> IntArray:
    """The exact answer: every book the reader may get scored in float64, the best LIMIT."""
    keep = np.ones(model.num_books, dtype=bool) if mask is None else mask.copy()
    keep[q.seen] = False
    return scored(model.rows, q, np.flatnonzero(keep).astype(np.int32)).positions[:LIMIT]


def _served_stage(
    model: HybridModel, mask: npt.NDArray[np.bool_] | None, scanned: bool | None = None
) -> Callable[[Query], IntArray]:
    return lambda q: shortlists(model.rows, [q], [LIMIT], [mask], scanned)[0].rows


def _faiss_stage(index: faiss.IndexScalarQuantizer, mask: npt.NDArray[np.bool_] | None) -> Callable[[Query], IntArray]:
    def first(q: Query) -> IntArray:
        keep = np.ones(index.ntotal, dtype=bool) if mask is None else mask.copy()
        keep[q.seen] = False
        bits = np.packbits(keep, bitorder="little")
        params = faiss.SearchParameters()
        params.sel = faiss.IDSelectorBitmap(len(keep), faiss.swig_ptr(bits))
        _values, found = index.search(q.vector[None, :], 2 * LIMIT, params=params)
        return np.sort(found[0][found[0] >= 0]).astype(np.int32)

    return first


def _measured(
    model: HybridModel, queries: list[Query], exact: list[IntArray], stages: list[Callable[[Query], IntArray]]
) -> list[tuple[float, float, float]]:
    """Per stage: recall@10, the median books re-scored, the mean µs of the first stage. Each reader goes through
    every stage in turn, the order rotating from reader to reader: this machine's pace drifts between seconds, and
    a stage timed in a pass of its own would carry its seconds' pace."""
    for stage in stages if queries else []:
        stage(queries[0])  # a stage's first call loads compiled code and fills caches: not timed
    hits, spent = np.zeros(len(stages)), np.zeros((len(queries), len(stages)))
    rescored = np.zeros_like(spent)
    for i, (q, truth) in enumerate(zip(queries, exact, strict=True)):
        for at in np.roll(np.arange(len(stages)), i).tolist():
            FLUSH.sum()
            started = time.perf_counter()
            candidates = stages[at](q)
            spent[i, at] = time.perf_counter() - started
            rescored[i, at] = len(candidates)
            answer = scored(model.rows, q, candidates).positions[:LIMIT]
            hits[at] += len(set(answer.tolist()) & set(truth.tolist()))
    total = max(sum(len(t) for t in exact), 1)
    return [
        (hits[at] / total, float(np.median(rescored[:, at])), 1e6 * float(spent[:, at].mean()))
        for at in range(len(stages))
    ]


if __name__ == "__main__":
    raise SystemExit(main())
