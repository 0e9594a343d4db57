"""Online metrics and canaries, proven by simulated readers built from a real data set's held-out interactions.

    .venv/bin/python -m bench.online [--data goodbooks|movielens] [--runs 200] [--skip-service]

The evaluation split of the data set (20% of each eligible reader's liked items held out) gives every simulated
reader the books they would really like. Shown an answer, a reader clicks each book with a probability that depends
on whether it is among their held-out books and on its position (HIT_CLICK or MISS_CLICK, times POSITION_DECAY per
rank), and reads a clicked held-out book with READ_AFTER_CLICK.

Two candidates: "good" (the default configuration) and "worse" (the same with a single ALS factor). Two parts:
1. The service itself (`python server.py`, its PostgreSQL, impressions, the feedback API and the canary's judge
   with RECOMMENDER_CANARY=auto): the worse version active, the good one started as a canary → promoted; then the
   worse one started as a canary against it → aborted. Impressions each decision needed.
2. Repeated runs of the same decision in process (the same sequential test on the same per-reader sums, looking
   every LOOK impressions as the judge looks every few seconds): decisions and false decisions over `--runs` runs
   each for good-vs-worse, worse-vs-good and an A/A canary (the same version twice, where any decision but the
   conservative abort at the maximum is false).

Results: bench/results/online.md and .csv.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import convert
from bench.harness import WORK, cli, started, write_results
from recommender.answers.statistics import Decision, SequentialTest
from recommender.client import RecommenderClient
from recommender.model.answers import Request
from recommender.model.dataset import Interaction
from recommender.model.evaluation import Split, split
from recommender.model.fit import train
from recommender.model.hybrid import HybridModel
from recommender.model.params import ALSParams, TrainingParams
from recommender.model.recommend import recommend_many
from recommender.serving.policy import serves_canary
from recommender.storage.sums import OnlineSums
from recommender.v1 import recommender_pb2 as pb

HIT_CLICK, MISS_CLICK, POSITION_DECAY, READ_AFTER_CLICK = 0.30, 0.01, 0.8, 0.6
SHOWN = 10
SHARE = 0.5  # of the readers on the canary (the service's default is 0.1: ten times the traffic for a decision)
MAX_IMPRESSIONS = 20_000  # RECOMMENDER_CANARY_MAX_IMPRESSIONS's default
LOOK = 200  # impressions between two looks of the in-process runs


@dataclass(frozen=True)
class Reader:
    user_id: int
    liked: frozenset[int]  # their held-out books


def reactions(rng: random.Random, shown: list[int], liked: frozenset[int]) -> list[tuple[int, str]]:
    """What a reader does with an answer: (book, "click" or "read") events."""
    events = []
    for rank, book in enumerate(shown):
        chance = (HIT_CLICK if book in liked else MISS_CLICK) * POSITION_DECAY**rank
        if rng.random() < chance:
            events.append((book, "click"))
            if book in liked and rng.random() < READ_AFTER_CLICK:
                events.append((book, "read"))
    return events


def expected_reciprocal_rank(shown: list[int], liked: frozenset[int]) -> float:
    """What a reader's answer is worth on average: the sum over ranks of P(first click there) / rank."""
    expected, none_yet = 0.0, 1.0
    for rank, book in enumerate(shown):
        chance = (HIT_CLICK if book in liked else MISS_CLICK) * POSITION_DECAY**rank
        expected += none_yet * chance / (rank + 1)
        none_yet *= 1 - chance
    return expected


def outcome(shown: list[int], events: list[tuple[int, str]]) -> tuple[float, float, float]:
    """(clicked, reads, reciprocal rank of the first hit) of one impression, as storage/feedback.py counts them."""
    hits = {book for book, _ in events}
    first = min((shown.index(book) + 1 for book in hits), default=0)
    reads = len({book for book, event in events if event == "read"})
    return float(any(e == "click" for _, e in events)), float(reads), 1.0 / first if first else 0.0


# --- the data ---------------------------------------------------------------------------------------------------


def readers_of(the_split: Split) -> list[Reader]:
    return [Reader(user, frozenset(int(b) for b in books)) for user, books in sorted(the_split.held_out.items())]


def write_split(the_split: Split, folder: Path) -> None:
    """The training part as import CSVs: what the service may know."""
    folder.mkdir(parents=True, exist_ok=True)
    data = the_split.train
    columns = zip(data.user_ids, data.book_ids, data.ratings, data.timestamps, strict=True)
    interactions = [
        Interaction(int(u), int(b), None if np.isnan(r) else float(r), float(t) if t else None)
        for u, b, r, t in columns
    ]
    convert.write_import_files(folder, data.books, interactions)


GOOD = TrainingParams()
WORSE = TrainingParams(als=ALSParams(factors=1))
WEAKER = TrainingParams(als=ALSParams(factors=8))  # a subtler difference: how many impressions it takes
CANDIDATES = {"good": GOOD, "worse": WORSE, "weaker": WEAKER}
WORSE_SETTINGS = {"als_factors": "1"}


# --- part 1: the service ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceDecision:
    scenario: str
    status: str  # the canary's registry status after the decision
    reason: str
    canary_impressions: int
    active_impressions: int
    seconds: float


def service_part(the_split: Split, folder: Path, seed: int) -> list[ServiceDecision]:
    shutil.rmtree(folder / "var", ignore_errors=True)
    shutil.rmtree(folder / "artifacts", ignore_errors=True)
    csv = folder / "csv"
    write_split(the_split, csv)
    cli(folder, "import", "--books", str(csv / "books.csv"), "--interactions", str(csv / "interactions.csv"))
    cli(folder, "train", "--force", tuning="off")  # the good version first...
    cli(folder, "train", "--force", tuning="off", **WORSE_SETTINGS)  # ...then the worse
    readers = readers_of(the_split)
    rng = random.Random(seed)
    decisions = []
    serving = started(folder, {"tuning": "off", "canary": "auto", "canary_check_seconds": "2"})
    with serving as running, RecommenderClient(running.grpc_target) as client:
        models = client.list_models().models
        worse = next(m.version for m in models if m.status == "active")
        good = next(m.version for m in models if m.status == "retired")
        for scenario, canary in (("good canary vs worse active", good), ("worse canary vs good active", worse)):
            began = time.monotonic()
            client.start_canary(canary, SHARE)
            status = _simulate_until_decided(client, readers, rng, canary)
            reason = next(m.reason for m in client.list_models().models if m.version == canary)
            found = re.search(r"after (\d+) canary and (\d+) active impressions", reason)
            counts = (int(found[1]), int(found[2])) if found else (0, 0)
            decisions.append(ServiceDecision(scenario, status, reason, *counts, time.monotonic() - began))
    return decisions


def _simulate_until_decided(client: RecommenderClient, readers: list[Reader], rng: random.Random, canary: str) -> str:
    events: list[pb.FeedbackEvent] = []
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        for _ in range(200):
            reader = rng.choice(readers)
            answer = client.recommend(reader.user_id, SHOWN)
            shown = [b.book_id for b in answer.recommendations]
            for book, event in reactions(rng, shown, reader.liked):
                events.append(pb.FeedbackEvent(recommendation_id=answer.recommendation_id, book_id=book, event=event))
        if events:
            client.record_feedback(events)
            events = []
        status = next(m.status for m in client.list_models().models if m.version == canary)
        if status != "canary":
            return status
    raise SystemExit("no decision within 15 minutes")


# --- part 2: repeated runs in process ---------------------------------------------------------------------------


def answers(model: HybridModel, readers: list[Reader]) -> dict[int, list[int]]:
    results = recommend_many(model, [Request(r.user_id, SHOWN) for r in readers], explain=False)
    return {r.user_id: [b.book_id for b in result.books] for r, result in zip(readers, results, strict=True)}


@dataclass(frozen=True)
class RunResult:
    decision: Decision
    canary_impressions: int
    by_test: bool  # decided by the test (not by reaching the maximum)


def one_run(
    readers: list[Reader], canary: dict[int, list[int]], active: dict[int, list[int]], test: SequentialTest, seed: int
) -> RunResult:
    """One canary: readers arrive at random, the share's readers see the canary; the test looks every LOOK."""
    rng = random.Random(seed)
    index = {r.user_id: i for i, r in enumerate(readers)}
    salt = rng.randrange(2**31)  # another set of canary readers each run, as another service would pick
    arm_of = [serves_canary(r.user_id ^ salt, SHARE) for r in readers]
    tallies = np.zeros((2, len(readers), 4))  # per arm and reader: impressions, clicks, reads, reciprocal ranks
    while True:
        for _ in range(LOOK):
            reader = rng.choice(readers)
            on_canary = arm_of[index[reader.user_id]]
            shown = (canary if on_canary else active)[reader.user_id]
            clicked, reads, rr = outcome(shown, reactions(rng, shown, reader.liked))
            tallies[int(on_canary), index[reader.user_id]] += (1.0, clicked, reads, rr)
        ours, theirs = (_sums(tallies[arm]) for arm in (1, 0))
        verdict = test.decide(ours, theirs)
        if verdict.decision is not Decision.WAIT:
            return RunResult(verdict.decision, ours.impressions, verdict.likelihood_ratio >= 1 / test.alpha)


def _sums(tally: np.ndarray) -> OnlineSums:
    seen = tally[tally[:, 0] > 0]
    return OnlineSums.of_users(*(seen[:, column].tolist() for column in range(4)))


def repeated_part(readers: list[Reader], lists: dict[str, dict[int, list[int]]], runs: int) -> list[list[object]]:
    test = SequentialTest(max_impressions=MAX_IMPRESSIONS)
    rows: list[list[object]] = []
    scenarios = (
        ("good", "worse", Decision.PROMOTE),
        ("worse", "good", Decision.ABORT),
        ("good", "weaker", Decision.PROMOTE),
        ("weaker", "good", Decision.ABORT),
        ("good", "good", None),
    )
    for canary_name, active_name, right in scenarios:
        name = f"{canary_name} canary vs {active_name} active" + (" (A/A)" if right is None else "")
        canary, active = lists[canary_name], lists[active_name]
        results = [one_run(readers, canary, active, test, seed) for seed in range(runs)]
        promoted = sum(r.decision is Decision.PROMOTE for r in results)
        aborted_test = sum(r.decision is Decision.ABORT and r.by_test for r in results)
        at_max = sum(not r.by_test for r in results)
        # A/A: a decision of the test either way is false; the conservative abort at the maximum is right.
        false = promoted + aborted_test if right is None else sum(r.decision is not right for r in results)
        needed = np.array([r.canary_impressions for r in results if r.by_test] or [0])
        rows.append(
            [
                name,
                runs,
                promoted,
                aborted_test,
                at_max,
                false,
                f"{false / runs:.3f}",
                int(np.median(needed)),
                int(np.percentile(needed, 90)),
            ]
        )
        print(rows[-1], flush=True)
    return rows


def _through_the_service(the_split: Split, folder: Path) -> list[list[object]]:
    """`service_part`'s decisions as the notes' table rows, each printed as it comes."""
    rows: list[list[object]] = []
    for decision in service_part(the_split, folder, seed=1):
        rows.append([
            f"service: {decision.scenario}", 1, decision.status, decision.canary_impressions,
            decision.active_impressions, f"{decision.seconds:.0f} s", decision.reason,
        ])  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("movielens", "goodbooks"), default="goodbooks")
    parser.add_argument("--runs", type=int, default=200, help="in-process runs per scenario")
    parser.add_argument("--skip-service", action="store_true", help="only the in-process runs")
    args = parser.parse_args()
    folder = WORK / f"online-{args.data}"
    data = convert.training_data(args.data)
    the_split = split(data)
    readers = readers_of(the_split)
    started = time.perf_counter()
    lists = {name: answers(train(the_split.train, params), readers) for name, params in CANDIDATES.items()}
    worth = {
        name: float(np.mean([expected_reciprocal_rank(shown[r.user_id], r.liked) for r in readers]))
        for name, shown in lists.items()
    }
    shown_worth = ", ".join(f"{name} {value:.4f}" for name, value in worth.items())
    print(f"{len(readers)} simulated readers; models trained in {time.perf_counter() - started:.0f} s; expected "
          f"mean reciprocal rank: {shown_worth}", flush=True)  # fmt: skip
    service_rows = [] if args.skip_service else _through_the_service(the_split, folder)
    rows = repeated_part(readers, lists, args.runs)
    notes = (
        f"Data: {args.data} ({len(readers)} simulated readers, their held-out liked items). Readers click a shown "
        f"book with {HIT_CLICK} (held out) or {MISS_CLICK} (not) times {POSITION_DECAY}^rank, and read a clicked "
        f"held-out book with {READ_AFTER_CLICK}. Canary share {SHARE}; the test: mixture SPRT on mean reciprocal "
        f"rank per reader, alpha 0.05, at most {MAX_IMPRESSIONS} canary impressions; in-process runs look every "
        f"{LOOK} impressions. 'good': default parameters; 'worse': one ALS factor; 'weaker': eight. Expected mean "
        f"reciprocal rank of a reader's answer under this model of readers: {shown_worth}."
    )
    if service_rows:
        notes += "\n\nThrough the service (python server.py, PostgreSQL, the feedback API, the canary's judge):\n\n"
        notes += "| scenario | runs | status after | canary impressions | active impressions | time | reason |\n"
        notes += "|---|---|---|---|---|---|---|\n"
        notes += "\n".join("| " + " | ".join(str(v) for v in row) + " |" for row in service_rows)
    write_results(
        "online",
        "Canary decisions by simulated readers",
        [
            "scenario",
            "runs",
            "promoted",
            "aborted by the test",
            "aborted at the maximum",
            "false decisions",
            "false-decision rate",
            "canary impressions needed (median)",
            "(p90)",
        ],
        rows,
        notes,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
