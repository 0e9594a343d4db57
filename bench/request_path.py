"""Where a Recommend call's time goes: `.venv/bin/python -m bench.request_path [--seconds 10] [--factors 400]
[--reference 64]`.

In process, one BLAS thread, over 2,000 random known users of the newest version of the 10,000-book / 50,000-user /
1,000,000-interaction catalogue (run `bench.serving` once to create it), microseconds per request (median of 5
passes), per stage of the model's answer: the model's record of the user, the query (the reader's vector and the
candidates' statistics), the shortlist (a product with every book: 8-bit codes or float32), its exact scores,
`because`, the whole answer without and with `because`, in batches of 16, what `because` adds to an answer (the
median of 40 blocks of users timed both ways in turn), and the response message. Timed after the model and the
fixtures are settled out of the collector's generations, as a serving process settles its version. The same for that
version's CF part refitted at `--factors` (the cost of a large model: the search is free to choose one), and its
whole answer (with `because`) against the same refitted at `--reference` factors, in blocks timed both ways in turn
(what a large model costs against a small one, on whatever machine runs it). Under load
(wrk, 16 connections through Envoy, default settings): CPU time per request of the serving processes, of Envoy and
of the client (wrk), for Health and for Recommend, from /proc and the children's rusage. Writes
bench/results/request_path.*.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import psutil
from threadpoolctl import threadpool_limits

from bench.harness import MEDIUM, WORK, service, write_results
from bench.serving import wrk_load
from recommender.model import cf
from recommender.model.answers import Request
from recommender.model.explain import explained
from recommender.model.hybrid import HybridModel
from recommender.model.ranking import scored
from recommender.model.readers import reader_of
from recommender.model.recommend import query_for, recommend, recommend_many
from recommender.model.shortlist import shortlist, shortlists
from recommender.model.warm import warm
from recommender.serving.messages import AnswerMessages
from recommender.serving.versions import settle_memory
from recommender.storage.artifacts import LocalArtifactStore

USERS = 2_000
BATCH = 16
PAIRED_BLOCKS = 40


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--factors", type=int, default=400)
    parser.add_argument("--reference", type=int, default=64)
    args = parser.parse_args()
    served = _newest_version()
    large, reference = refitted(served, args.factors), refitted(served, args.reference)
    rows: list[list[object]] = []
    for model in (served, large):
        label = f"in process, {model.cf.item_factors.shape[1]} factors"
        rows += [[label, stage, micros] for stage, micros in in_process(model).items()]
    users = _users(served)
    warm(reference)
    settle_memory()
    rows.append([
        f"in process, {args.factors} against {args.reference} factors",
        "answer with because, a ratio (median of paired blocks)",
        _paired(lambda u: recommend(reference, u, 10), lambda u: recommend(large, u, 10), users),
    ])  # fmt: skip
    with service(MEDIUM) as running:
        for kind in ("health", "known"):
            rows += under_load(running.process.pid, running.url, kind, args.seconds)
    write_results(
        "request_path",
        "Where a Recommend call's time goes",
        ["where", "what", "us per request (or requests/s)"],
        rows,
        f"{USERS:,} random known users, limit 10; in process: median of 5 passes, one BLAS thread, the served "
        f"version and its CF part refitted at {args.factors} factors; under load: wrk, 16 connections through "
        f"Envoy, {args.seconds:.0f} s each, catalogue {MEDIUM.name}, default settings.",
    )
    return 0


def in_process(model: HybridModel) -> dict[str, float]:
    threadpool_limits(1, "blas")
    warm(model)
    users = _users(model)
    readers = [reader_of(model, user) for user in users]
    queries = [query_for(model, reader) for reader in readers]
    lists = [shortlist(model.rows, [q], [10], [None])[0] for q in queries]
    answers = [recommend(model, user, 10) for user in users]
    best = [scored(model.rows, q, candidates).positions[:10] for q, candidates in zip(queries, lists, strict=True)]
    version, shown = model.meta.version, AnswerMessages()
    settle_memory()  # as a serving process does after a swap: the collector no longer walks the model (or these lists)

    def batched() -> None:
        for start in range(0, len(users), BATCH):
            recommend_many(model, [Request(user, 10) for user in users[start : start + BATCH]])

    def because() -> None:
        for positions, reader, q in zip(best, readers, queries, strict=True):
            explained(model.catalogue, model.content, model.rows, model.cf, positions, reader, q)

    return {
        "the model's record of the user": _per_request(lambda: [reader_of(model, u) for u in users]),
        "the query (vector and statistics)": _per_request(lambda: [query_for(model, r) for r in readers]),
        "the shortlist (the 8-bit scan where its bound is narrow, else one float32 product)": _per_request(
            lambda: [shortlist(model.rows, [q], [10], [None]) for q in queries]
        ),
        "the shortlist as served against the float32 product, a ratio (median of paired blocks)": _paired(
            lambda i: shortlists(model.rows, [queries[i]], [10], [None], False),
            lambda i: shortlists(model.rows, [queries[i]], [10], [None]),
            range(USERS),
        ),
        "the shortlist's exact scores": _per_request(
            lambda: [scored(model.rows, q, c) for q, c in zip(queries, lists, strict=True)]
        ),
        "because": _per_request(because),
        "answer, without because": _per_request(lambda: [recommend(model, u, 10, explain=False) for u in users]),
        "answer, with because": _per_request(lambda: [recommend(model, u, 10) for u in users]),
        f"answer, with because, in batches of {BATCH}": _per_request(batched),
        "because: what it adds to the answer, a share (median of paired blocks)": _paired(
            lambda u: recommend(model, u, 10, explain=False), lambda u: recommend(model, u, 10), users
        )
        - 1.0,
        "response message (RecommendResponse)": _per_request(
            lambda: [shown.recommend_response(u, version, a, "") for u, a in zip(users, answers, strict=True)]
        ),
    }


def refitted(model: HybridModel, factors: int) -> HybridModel:
    """`model` with its CF part fitted again at `factors` (three iterations: the cost is the shape's)."""
    from implicit.cpu.als import AlternatingLeastSquares

    params = dataclasses.replace(model.cf.params, factors=factors, iterations=3)
    liked = model.cf.user_items.copy()
    liked.data = np.maximum(liked.data, 0.0).astype(np.float32)
    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(
            factors=factors, iterations=3, regularization=params.regularization, alpha=params.confidence, random_state=0
        )
        als.fit(liked, show_progress=False)
    fitted = cf.CFModel(
        model.cf.user_ids, model.cf.item_ids, np.asarray(als.user_factors, dtype=np.float32),
        np.asarray(als.item_factors, dtype=np.float32), model.cf.user_items, params,
    )  # fmt: skip
    meta = dataclasses.replace(model.meta, params=dataclasses.replace(model.meta.params, als=params))
    return HybridModel.assemble(meta, model.catalogue, fitted, model.content)


def under_load(server: int, url: str, kind: str, seconds: float) -> list[list[object]]:
    """CPU per request of the serving processes, Envoy and wrk, and the rate, for `kind` through Envoy."""
    serving, envoy = _serving_processes(server), _named(server, "envoy")
    serving_before, envoy_before = sum(_cpu(p) for p in serving), _cpu(envoy)
    client_before = _children_cpu()
    started = time.monotonic()
    rate, *_ = wrk_load(url, kind, MEDIUM.users, seconds, 16)
    answered = rate * (time.monotonic() - started)
    call = "Health" if kind == "health" else "Recommend"
    return [
        ["under load", f"{call}: serving processes' CPU ({len(serving)})",
         (sum(_cpu(p) for p in serving) - serving_before) / answered * 1e6],
        ["under load", f"{call}: Envoy CPU", (_cpu(envoy) - envoy_before) / answered * 1e6],
        ["under load", f"{call}: client (wrk) CPU", (_children_cpu() - client_before) / answered * 1e6],
        ["under load", f"{call}: requests/s", rate],
    ]  # fmt: skip


def _users(model: HybridModel) -> list[int]:
    rng = random.Random(0)
    return [int(model.cf.user_ids[rng.randrange(model.cf.num_users)]) for _ in range(USERS)]


def _per_request(run: Callable[[], object], passes: int = 5) -> float:
    times: list[float] = []
    for _ in range(passes):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) / USERS * 1e6)
    return statistics.median(times)


def _paired(first: Callable[[int], object], second: Callable[[int], object], users: Sequence[int]) -> float:
    """The median, over blocks of users, of `second`'s time over `first`'s, each block timed both ways in turn (the
    order alternating): this machine's pace drifts by up to half between seconds, a pair's ratio hardly."""
    size = len(users) // PAIRED_BLOCKS
    ratios = []
    for block in range(PAIRED_BLOCKS):
        chosen = users[block * size : (block + 1) * size]
        timed: dict[int, float] = {}
        for at in (0, 1) if block % 2 else (1, 0):
            started = time.perf_counter()
            for user in chosen:
                (first, second)[at](user)
            timed[at] = time.perf_counter() - started
        ratios.append(timed[1] / timed[0])
    return statistics.median(ratios)


def _newest_version() -> HybridModel:
    store = LocalArtifactStore(WORK / MEDIUM.name / "artifacts")
    versions: Sequence[str] = store.complete_versions()
    if not versions:
        raise SystemExit("no version of the benchmark catalogue yet: run `.venv/bin/python -m bench.serving` once")
    return store.read(versions[0])


def _serving_processes(server: int) -> list[int]:
    """The server and its serving workers (`recommender.cli worker`)."""
    children = psutil.Process(server).children(recursive=True)
    return [server] + [c.pid for c in children if "worker" in c.cmdline() and "recommender.cli" in c.cmdline()]


def _named(server: int, name: str) -> int:
    for child in psutil.Process(server).children(recursive=True):
        if name in Path(child.exe()).name:
            return int(child.pid)
    raise SystemExit(f"no {name} under the server")


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return float(usage.ru_utime + usage.ru_stime)


if __name__ == "__main__":
    raise SystemExit(main())
