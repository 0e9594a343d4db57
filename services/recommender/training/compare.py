"""`recommender evaluate`: the evaluation protocol on any data in the import format, as a table and a chart."""

from __future__ import annotations

import csv
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from recommender.model import cf
from recommender.model.dataset import TrainingData
from recommender.model.evaluation import RankingMetrics, Split, positives, split
from recommender.model.fit import fit_content
from recommender.model.hybrid import HybridModel
from recommender.model.params import SplitParams, TrainingParams
from recommender.model.ranking import Mode
from recommender.training.quality import fit_and_measure, measure, measure_parts, tune

FEW = 3  # "few-history" users keep this many training interactions


@dataclass(frozen=True)
class Row:
    model: str
    metrics: RankingMetrics
    fit_seconds: float


def compare(
    data: TrainingData,
    params: TrainingParams,
    split_params: SplitParams,
    tuning_seconds: float | None,
    tune_alpha: bool = False,
) -> list[Row]:
    """The served configuration (tuned within `tuning_seconds` when given), its parts, popularity, and implicit's
    ALS with its library defaults on binary 4-star-and-up positives, on one split; then the served configuration
    and popularity for users whose training history is cut to three books."""
    the_split = split(data, split_params)
    fitted_content = fit_content(data.books, params)
    if tuning_seconds is not None:
        best, fits = tune(the_split, params, fitted_content, tuning_seconds, tune_alpha)
        label = f"served (tuned: {fits} fits)"
    else:
        best, label = fit_and_measure(the_split, params, fitted_content, lambda: False), "served"
    parts = measure_parts(best.model, the_split)
    rows = [
        Row(label, parts["hybrid"], best.seconds),
        Row("cf only", parts["cf"], best.seconds),
        Row("content only", parts["content"], best.seconds),
        Row("popularity", parts["popularity"], 0.0),
        _library_defaults(the_split, best.model, split_params.like_threshold),
    ]
    few = _few_history(data, split_params)
    few_model = fit_and_measure(few, best.params, fitted_content, lambda: False).model
    rows += [
        Row(f"served, users with {FEW} books", measure(few_model, few), 0.0),
        Row(f"popularity, users with {FEW} books", measure(few_model, few, Mode.POPULAR), 0.0),
    ]
    return rows


def _library_defaults(the_split: Split, served: HybridModel, like_threshold: float) -> Row:
    """implicit's AlternatingLeastSquares(random_state=42) on binary positives, ranked like the others (books
    the user has in training excluded)."""
    from implicit.cpu.als import AlternatingLeastSquares

    started = time.perf_counter()
    train = the_split.train.only_books(served.catalogue.book_ids)
    liked = positives(train, like_threshold)
    binary = dataclasses.replace(train, ratings=np.where(liked, np.nan, 0.0).astype(np.float32))
    user_ids, item_ids, matrix = cf.confidence_matrix(binary)
    matrix.data = (matrix.data > 0).astype(np.float32)
    matrix.eliminate_zeros()
    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(random_state=42)
        als.fit(matrix, show_progress=False)
    seen_ids, seen_items, seen = cf.confidence_matrix(train)
    assert np.array_equal(seen_ids, user_ids) and np.array_equal(seen_items, item_ids)
    model = dataclasses.replace(
        served,
        cf=cf.CFModel(user_ids, item_ids, np.asarray(als.user_factors), np.asarray(als.item_factors), seen),
    )
    return Row("implicit ALS, library defaults", measure(model, the_split, Mode.CF), time.perf_counter() - started)


def _few_history(data: TrainingData, split_params: SplitParams) -> Split:
    """The same held-out books, with each evaluated user's training history cut to FEW random books."""
    full = split(data, split_params)
    rng = np.random.default_rng(split_params.seed)
    train = full.train
    keep = np.ones(train.num_interactions, dtype=bool)
    for user in full.held_out:
        rows = np.flatnonzero(train.user_ids == user)
        keep[rng.choice(rows, size=len(rows) - FEW, replace=False)] = False
    return Split(train.subset(keep), full.held_out)


def table(rows: list[Row]) -> str:
    lines = [f"{'model':40s} {'P@10':>7s} {'R@10':>7s} {'NDCG@10':>8s} {'coverage':>9s} {'fit s':>7s}"]
    for row in rows:
        m = row.metrics
        lines.append(
            f"{row.model:40s} {m.precision_at_10:7.4f} {m.recall_at_10:7.4f} {m.ndcg_at_10:8.4f} "
            f"{m.coverage:9.4f} {row.fit_seconds:7.2f}"
        )
    return "\n".join(lines)


def write(rows: list[Row], out: Path, title: str) -> tuple[Path, Path]:
    """The table as CSV, and a bar chart of NDCG@10 and recall@10 per model as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / "evaluation.csv", out / "evaluation.png"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "precision_at_10", "recall_at_10", "ndcg_at_10", "coverage", "fit_seconds"])
        for row in rows:
            m = row.metrics
            writer.writerow([row.model, *(f"{v:.5f}" for v in m.as_dict().values()), f"{row.fit_seconds:.3f}"])
    figure, axis = plt.subplots(figsize=(10, 0.55 * len(rows) + 1.5))
    names = [row.model for row in rows][::-1]
    positions = np.arange(len(rows))
    ndcg = [row.metrics.ndcg_at_10 for row in rows][::-1]
    recall = [row.metrics.recall_at_10 for row in rows][::-1]
    axis.barh(positions + 0.2, ndcg, height=0.4, label="NDCG@10", color="#3b6ea8")
    axis.barh(positions - 0.2, recall, height=0.4, label="recall@10", color="#e0a030")
    for y, value in zip(positions + 0.2, ndcg, strict=True):
        axis.text(value, y, f" {value:.3f}", va="center", fontsize=8)
    axis.set_yticks(positions, names)
    axis.set_xlabel("higher is better")
    axis.set_title(title)
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(png_path, dpi=110)
    plt.close(figure)
    return csv_path, png_path
