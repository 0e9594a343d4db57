"""Where a Recommend call's time goes: `.venv/bin/python -m bench.request_path [--seconds 10]`.

In process, one BLAS thread, over 2,000 random known users of the newest version of the 10,000-book /
50,000-user / 1,000,000-interaction catalogue (run `bench.serving` once to create it), microseconds per request
(median of 5 passes): the model's record of the user, the model's answer without and with `because`, the same
answered in batches of 16 (per request), and the response message. Under load (wrk, 16 connections through Envoy):
CPU time per request of the serving process and of Envoy, for Health and for Recommend (from /proc), the one
figure that bounds requests per second on this machine. Writes bench/results/request_path.*.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil
from threadpoolctl import threadpool_limits

from bench.harness import MEDIUM, WORK, service, write_results
from bench.serving import wrk_load
from recommender.model.answers import Request
from recommender.model.hybrid import HybridModel, warm
from recommender.serving.messages import recommend_response
from recommender.storage.artifacts import LocalArtifactStore

USERS = 2_000
BATCH = 16


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    rows = [["in process", stage, micros] for stage, micros in in_process(_newest_version()).items()]
    with service(MEDIUM) as running:
        envoy = _envoy_of(running.process.pid)
        for kind in ("health", "known"):
            server_before, envoy_before = _cpu(running.process.pid), _cpu(envoy)
            started = time.monotonic()
            rate, *_ = wrk_load(running.url, kind, MEDIUM.users, args.seconds, 16)
            answered = rate * (time.monotonic() - started)
            call = "Health" if kind == "health" else "Recommend"
            rows.append(
                [
                    "under load",
                    f"{call}: serving process CPU",
                    (_cpu(running.process.pid) - server_before) / answered * 1e6,
                ]
            )
            rows.append(["under load", f"{call}: Envoy CPU", (_cpu(envoy) - envoy_before) / answered * 1e6])
            rows.append(["under load", f"{call}: requests/s", rate])
    write_results(
        "request_path",
        "Where a Recommend call's time goes",
        ["where", "what", "us per request (or requests/s)"],
        rows,
        f"{USERS:,} random known users, limit 10; in process: median of 5 passes, one BLAS thread; under load: wrk, "
        f"16 connections through Envoy, {args.seconds:.0f} s each, catalogue {MEDIUM.name}.",
    )
    return 0


def in_process(model: HybridModel) -> dict[str, float]:
    threadpool_limits(1, "blas")
    warm(model)
    rng = random.Random(0)
    users = [int(model.cf.user_ids[rng.randrange(model.cf.num_users)]) for _ in range(USERS)]
    answers = [model.recommend(user, 10) for user in users]
    version = model.meta.version

    def batched() -> None:
        for start in range(0, len(users), BATCH):
            model.recommend_many([Request(user, 10) for user in users[start : start + BATCH]])

    return {
        "the model's record of the user (history)": _per_request(lambda: [model.reader(u) for u in users]),
        "recommend, without because": _per_request(lambda: [model.recommend(u, 10, explain=False) for u in users]),
        "recommend, with because": _per_request(lambda: [model.recommend(u, 10) for u in users]),
        f"recommend, with because, in batches of {BATCH}": _per_request(batched),
        "response message (RecommendResponse)": _per_request(
            lambda: [recommend_response(u, version, a, "") for u, a in zip(users, answers, strict=True)]
        ),
    }


def _per_request(run: Callable[[], object], passes: int = 5) -> float:
    times: list[float] = []
    for _ in range(passes):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) / USERS * 1e6)
    return statistics.median(times)


def _newest_version() -> HybridModel:
    store = LocalArtifactStore(WORK / MEDIUM.name / "artifacts")
    versions: Sequence[str] = store.complete_versions()
    if not versions:
        raise SystemExit("no version of the benchmark catalogue yet: run `.venv/bin/python -m bench.serving` once")
    return store.read(versions[0])


def _envoy_of(server: int) -> int:
    for child in psutil.Process(server).children(recursive=True):
        if "envoy" in Path(child.exe()).name:
            return int(child.pid)
    raise SystemExit("no Envoy under the server")


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


if __name__ == "__main__":
    raise SystemExit(main())
