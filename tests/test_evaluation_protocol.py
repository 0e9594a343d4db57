"""The evaluation protocol and metrics, against hand-computed cases."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recommender.model.dataset import Book, Interaction, TrainingData
from recommender.model.evaluation import Split, evaluate, split
from recommender.model.params import SplitParams

BOOKS = [Book(i, f"Book {i}") for i in range(1, 21)]


def test_metrics_match_a_hand_computed_case() -> None:
    the_split = Split(
        train=TrainingData.from_interactions(BOOKS, []),
        held_out={1: np.array([1, 2], dtype=np.int32), 2: np.array([5], dtype=np.int32)},
    )
    ranked = {1: np.array([1, 3, 2], dtype=np.int32), 2: np.array([4, 6, 7], dtype=np.int32)}
    metrics = evaluate(lambda user, _k: ranked[user], the_split, catalogue_size=20, k=3).warm
    # User 1: hits at ranks 1 and 3 of 3; user 2: no hit.
    assert metrics.precision_at_10 == pytest.approx((2 / 3 + 0) / 2)
    assert metrics.recall_at_10 == pytest.approx((2 / 2 + 0) / 2)
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    ideal = 1 / math.log2(2) + 1 / math.log2(3)
    assert metrics.ndcg_at_10 == pytest.approx((dcg / ideal + 0) / 2)
    assert metrics.coverage == pytest.approx(6 / 20)  # books 1, 2, 3, 4, 6, 7 shown
    assert metrics.users == 2


def test_a_perfect_ranking_scores_one() -> None:
    the_split = Split(TrainingData.from_interactions(BOOKS, []), {1: np.array([7, 9], dtype=np.int32)})
    metrics = evaluate(lambda _u, _k: np.array([9, 7], dtype=np.int32), the_split, catalogue_size=20, k=2).warm
    assert (metrics.precision_at_10, metrics.recall_at_10, metrics.ndcg_at_10) == (1.0, 1.0, 1.0)


def _data() -> TrainingData:
    rows = [Interaction(1, b, 5.0, timestamp=float(b)) for b in range(1, 11)]  # 10 liked books
    rows += [Interaction(1, b, 1.0, timestamp=100.0) for b in range(11, 14)]  # disliked: never held out
    rows += [Interaction(2, b, None, timestamp=float(b)) for b in range(1, 5)]  # 4 reads: too few to evaluate
    rows += [Interaction(3, b, 3.0, timestamp=float(b)) for b in range(1, 9)]  # rated 3: not liked enough
    return TrainingData.from_interactions(BOOKS, rows)


def test_split_holds_out_a_fifth_of_the_liked_books_of_eligible_users() -> None:
    data = _data()
    the_split = split(data, SplitParams())
    assert list(the_split.held_out) == [1]
    held = set(the_split.held_out[1].tolist())
    assert len(held) == 2 and held <= set(range(1, 11))
    assert the_split.train.num_interactions == data.num_interactions - 2
    kept = {(u, b) for u, b in zip(the_split.train.user_ids, the_split.train.book_ids, strict=True)}
    assert not {(1, b) for b in held} & kept
    assert split(data, SplitParams()).held_out[1].tolist() == the_split.held_out[1].tolist()  # deterministic
    other_seeds = {tuple(split(data, SplitParams(seed=seed)).held_out[1].tolist()) for seed in range(10)}
    assert len(other_seeds) > 1  # the seed decides which books


def test_a_quarter_of_the_evaluated_users_form_the_cold_slice_with_three_training_books() -> None:
    rows = [Interaction(u, b, 5.0) for u in range(1, 41) for b in range(1, 13)]  # 40 users, 12 liked books each
    data = TrainingData.from_interactions(BOOKS, rows)
    the_split = split(data, SplitParams())
    assert len(the_split.held_out) == 40 and len(the_split.cold) == 10
    for user, held in the_split.held_out.items():
        trained = set(the_split.train.book_ids[the_split.train.user_ids == user].tolist())
        assert not trained & set(held.tolist())
        assert len(trained) == (3 if user in the_split.cold else 12 - len(held))
    assert split(data, SplitParams()).cold == the_split.cold  # deterministic
    assert len(the_split.slice(cold=True)) == 10 and len(the_split.slice(cold=False)) == 30
    report = evaluate(lambda user, _k: the_split.held_out[user], the_split, catalogue_size=20)
    assert (report.warm.users, report.cold.users) == (30, 10)
    assert report.as_dict()["ndcg_at_10_cold"] == report.cold.ndcg_at_10 == 1.0


def test_a_time_split_holds_out_the_latest_liked_books() -> None:
    the_split = split(_data(), SplitParams(by_time=True))
    assert the_split.held_out[1].tolist() == [9, 10]


def test_the_evaluate_command_prints_a_table_and_writes_csv_and_png(tmp_path: Path) -> None:
    from recommender.storage import demo

    catalogue = demo.generate(7, 300, 120, 3000)
    books, interactions = tmp_path / "books.csv", tmp_path / "interactions.csv"
    books.write_text(
        "book_id,title,genres\n" + "".join(f'{b.book_id},"{b.title}",{"|".join(b.genres)}\n' for b in catalogue.books)
    )
    interactions.write_text(
        "user_id,book_id,rating\n"
        + "".join(f"{i.user_id},{i.book_id},{'' if i.rating is None else i.rating}\n" for i in catalogue.interactions)
    )
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "recommender.cli", "evaluate", "--books", str(books), "--interactions",
         str(interactions), "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "RECOMMENDER_TUNING_TRIALS": "3"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model"))
    names = [line[:34].strip() for line in lines[header + 1 : header + 7]]
    assert names[0].startswith("served") and names[1:6] == [
        "served without content",
        "cf only",
        "content only",
        "popularity",
        "implicit ALS, library defaults",
    ]
    with open(out / "evaluation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["model"] for row in rows] == names
    assert all(0.0 <= float(row["ndcg_at_10"]) <= 1.0 for row in rows)
    assert (out / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The search is visible: its best by minutes spent, as text and as a chart.
    assert any(line.startswith("search: ") for line in lines) and "best NDCG@10" in result.stdout
    assert (out / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_beyond_max_users_a_deterministic_sample_is_evaluated() -> None:
    rows = [Interaction(u, b, 5.0) for u in range(1, 31) for b in range(1, 11)]
    data = TrainingData.from_interactions(BOOKS, rows)
    sampled = split(data, SplitParams(max_users=7, cold_share=0.0))
    assert len(sampled.held_out) == 7
    assert split(data, SplitParams(max_users=7, cold_share=0.0)).held_out.keys() == sampled.held_out.keys()
    assert sampled.train.num_interactions == len(rows) - 7 * 2  # the others keep all their books
