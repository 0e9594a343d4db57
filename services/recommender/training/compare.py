"""`recommender evaluate`: the evaluation protocol on any data in the import format, as a table and a chart."""

from __future__ import annotations

import csv
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from recommender.model import cf
from recommender.model.dataset import TrainingData
from recommender.model.derived import Derived
from recommender.model.evaluation import Report, Split, positives, split
from recommender.model.fit import fit_content
from recommender.model.hybrid import HybridModel
from recommender.model.params import SplitParams, TrainingParams
from recommender.model.ranking import Mode
from recommender.training.trials import Trial, fit_and_measure, measure, measure_parts
from recommender.training.tuning import Search, progress, tune


@dataclass(frozen=True)
class Row:
    model: str
    metrics: Report
    fit_seconds: float


@dataclass(frozen=True)
class Comparison:
    rows: list[Row]
    tried: list[Trial]  # the search's trials, in the order it ran them (none without a search)


def compare(data: TrainingData, params: TrainingParams, split_params: SplitParams, search: Search | None) -> Comparison:
    """The served configuration (searched with `search` when given, as a first version is), the same without its
    content part, its parts, popularity, and implicit's ALS with its library defaults on binary 4-star-and-up
    positives, on one split: each on the warm slice and on the cold one (readers cut to a few books)."""
    the_split = split(data, split_params)
    fitted_content = fit_content(data.books, params)
    tried: list[Trial] = []
    if search is not None:
        best, tried = tune(the_split, params, fitted_content, search)
        label = f"served (searched: {len(tried)} trials)"
    else:
        best, label = fit_and_measure(the_split, params, fitted_content, lambda: False), "served"
    parts = measure_parts(best.model, the_split)
    # The ablation: the same fits and priors with no content (CF alone where the blend would lean on content).
    without_content = measure(best.model.with_blend(alpha=1.0, cf_prior=0.0), the_split)
    rows = [
        Row(label, parts["hybrid"], best.seconds),
        Row("served without content", without_content, best.seconds),
        Row("cf only", parts["cf"], best.seconds),
        Row("content only", parts["content"], best.seconds),
        Row("popularity", parts["popularity"], 0.0),
        library_defaults(the_split, best.model, split_params.like_threshold),
    ]
    return Comparison(rows, tried)


def library_defaults(the_split: Split, served: HybridModel, like_threshold: float) -> Row:
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
        derived=Derived(),  # other fits: rows of their own
    )
    return Row("implicit ALS, library defaults", measure(model, the_split, Mode.CF), time.perf_counter() - started)


COLUMNS = ["precision_at_10", "recall_at_10", "ndcg_at_10", "coverage"]
COLUMNS += [f"{name}_cold" for name in COLUMNS[:3]]


def table(rows: list[Row]) -> str:
    head = f"{'model':34s} {'P@10':>7s} {'R@10':>7s} {'NDCG@10':>8s} {'cover':>6s} | {'cold: P@10':>10s} {'R@10':>7s}"
    lines = [f"{head} {'NDCG@10':>8s} | {'fit s':>7s}"]
    for row in rows:
        m = row.metrics.as_dict()
        lines.append(
            f"{row.model:34s} {m['precision_at_10']:7.4f} {m['recall_at_10']:7.4f} {m['ndcg_at_10']:8.4f} "
            f"{m['coverage']:6.3f} | {m['precision_at_10_cold']:10.4f} {m['recall_at_10_cold']:7.4f} "
            f"{m['ndcg_at_10_cold']:8.4f} | {row.fit_seconds:7.2f}"
        )
    return "\n".join(lines)


def write(comparison: Comparison, out: Path, title: str) -> list[Path]:
    """The table as CSV, a bar chart of NDCG@10 per model as PNG, and the search's progress as PNG (when it
    searched)."""
    out.mkdir(parents=True, exist_ok=True)
    written = _write_table(comparison.rows, out, title)
    if comparison.tried:
        written.append(progress_chart(comparison.tried, out / "search.png", title))
    return written


def progress_chart(tried: list[Trial], path: Path, title: str) -> Path:
    """The best NDCG@10 a search had found by each minute (a step line), and every trial it ran: finished fits
    as dots, fits judged early and stopped as crosses at their sample's NDCG@10. A line still rising at the end
    says more budget would help."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(9, 4.5))
    finished = [t for t in tried if t.full]
    stopped = [t for t in tried if not t.full]
    axis.scatter([t.elapsed / 60 for t in finished], [t.metrics.ndcg for t in finished], s=14, color="#3b6ea8",
                 label="fit finished")  # fmt: skip
    axis.scatter([t.elapsed / 60 for t in stopped], [t.metrics.ndcg for t in stopped], s=14, marker="x",
                 color="#b0b0b0", label="judged early and stopped (on a sample)")  # fmt: skip
    points = progress(tried)
    if points:
        minutes, best = zip(*points, strict=True)
        axis.step(minutes, best, where="post", color="#e0a030", linewidth=2, label="best so far")
    axis.set_xlabel("minutes of search")
    axis.set_ylabel("NDCG@10")
    axis.set_title(f"search progress: {title}")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _write_table(rows: list[Row], out: Path, title: str) -> list[Path]:
    plt = _pyplot()
    csv_path, png_path = out / "evaluation.csv", out / "evaluation.png"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["model", *COLUMNS, "fit_seconds"])
        for row in rows:
            values = row.metrics.as_dict()
            writer.writerow([row.model, *(f"{values[c]:.5f}" for c in COLUMNS), f"{row.fit_seconds:.3f}"])
    figure, axis = plt.subplots(figsize=(10, 0.55 * len(rows) + 1.5))
    names = [row.model for row in rows][::-1]
    positions = np.arange(len(rows))
    ndcg = [row.metrics.ndcg for row in rows][::-1]
    cold = [row.metrics.ndcg_cold for row in rows][::-1]
    axis.barh(positions + 0.2, ndcg, height=0.4, label="NDCG@10", color="#3b6ea8")
    axis.barh(positions - 0.2, cold, height=0.4, label="NDCG@10, readers with 3 books", color="#e0a030")
    for y, value in zip(positions + 0.2, ndcg, strict=True):
        axis.text(value, y, f" {value:.3f}", va="center", fontsize=8)
    axis.set_yticks(positions, names)
    axis.set_xlabel("higher is better")
    axis.set_title(title)
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(png_path, dpi=110)
    plt.close(figure)
    return [csv_path, png_path]
