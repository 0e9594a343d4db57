"""The commands that run and end: `train`, `tune`, `evaluate` and `import`."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from recommender.model.dataset import Book, Interaction, TrainingData
from recommender.settings import Settings
from recommender.storage import importer
from recommender.storage.catalogue import CatalogueStore
from recommender.storage.database_server import database_url
from recommender.storage.db import Database
from recommender.training.progress import Progress, RetrainControl

if TYPE_CHECKING:
    from recommender.training.trials import Trial

log = logging.getLogger("recommender")


def train(settings: Settings, force: bool = False) -> int:
    """A retrain now, by the one retrain route (the cluster's lock, the trainer in a child process: Ctrl-C kills
    it); running services follow what it promotes."""
    from recommender.storage.artifacts import LocalArtifactStore
    from recommender.storage.registry import Outcome
    from recommender.training.child import ChildProcessTrainer, TrainingFailed
    from recommender.training.config import make_trainer
    from recommender.training.route import RetrainRoute, fork_server

    with database_url(settings) as dsn:
        asyncio.run(_prepare(settings, dsn))
        trainer = make_trainer(settings, dsn)
        route = RetrainRoute(dsn, ChildProcessTrainer(trainer, settings.log_format), trainer.tidy)
        with _progress_display() as on_progress, fork_server():
            control = RetrainControl(force=force, on_progress=on_progress)
            try:
                result = asyncio.run(route(control))
            except TrainingFailed as exc:
                print(f"recommender train: the retrain failed, the active version stays: {exc}", file=sys.stderr)
                return 1
            control.finish()
    if result is None:
        print(
            "recommender train: a retrain is already running (in a service or another `train`); "
            "try again when it has finished",
            file=sys.stderr,
        )
        return 1
    if result.outcome is Outcome.REJECTED:
        print(f"version {result.version} was rejected: {result.reason}; the active version stays")
        return 0
    sizes = result.data_sizes
    print(
        f"trained model version {result.version}: {sizes.get('users', 0)} users, {sizes.get('books', 0)} books, "
        f"{sizes.get('interactions', 0)} interactions in {result.seconds:.1f} s; written to "
        f"{settings.artifacts_dir.resolve()}; {result.outcome.value}: {result.reason}"
    )
    if LocalArtifactStore(settings.artifacts_dir).served_versions():
        print("running services switch to it within seconds (they follow the registry)")
    return 0


async def _prepare(settings: Settings, dsn: str) -> None:
    from recommender.storage.seed import DemoSize, prepare_database

    async with await Database.connect(dsn, max_size=1) as db:
        size = DemoSize(settings.demo_seed, settings.demo_books, settings.demo_users, settings.demo_interactions)
        await prepare_database(db, size)


def tune(settings: Settings) -> int:
    """A search as its own job (run it from cron or the schedule of your platform): the first version's budget of
    trials on the current data, recorded in the database for the next retrains."""
    from recommender.training.config import make_trainer

    with database_url(settings) as dsn:
        asyncio.run(_prepare(settings, dsn))
        os.nice(10)  # beside a service: its requests come first
        trainer = make_trainer(settings, dsn)
        best, tried = asyncio.run(trainer.search())
    print(progress_text(tried))
    print(
        f"searched {len(tried)} configurations: the best has NDCG@10 {best.metrics.ndcg:.4f}, and "
        f"{best.metrics.ndcg_cold:.4f} for readers with {trainer.split.cold_history} books; the next "
        f"retrains start from {best.params.as_dict()}"
    )
    return 0


def evaluate(settings: Settings, books_csv: Path, interactions_csv: Path, out: Path | None) -> int:
    from recommender.training import compare
    from recommender.training.config import split_params, training_params, tuning_policy
    from recommender.training.tuning import Search

    try:
        books, interactions = importer.read_books(books_csv), importer.read_interactions(interactions_csv)
    except importer.FileError as exc:
        print(f"recommender evaluate: {exc}", file=sys.stderr)
        return 2
    errors = books.errors() + interactions.errors()
    if errors:
        print("recommender evaluate: fix these rows:\n" + "\n".join(errors[:50]), file=sys.stderr)
        return 1
    data = TrainingData.from_interactions(books.rows, interactions.rows)
    the_split, tuning = split_params(settings), tuning_policy(settings)
    print(
        f"{len(books.rows)} books, {data.num_interactions} interactions; holding out {the_split.holdout:.0%} of "
        f"the liked books (unrated, or rated {the_split.like_threshold:g}+) of users with at least "
        f"{the_split.min_positives}, {'most recent' if the_split.by_time else 'at random'}; "
        f"{the_split.cold_share:.0%} of them cut to {the_split.cold_history} training books (cold)"
    )
    search = Search.of(tuning, the_split.seed)
    comparison = compare.compare(data, training_params(settings), the_split, search if tuning.enabled else None)
    print(compare.table(comparison.rows))
    if comparison.tried:
        print(progress_text(comparison.tried))
    if out is not None:
        written = compare.write(comparison, out, f"{books_csv.parent.name}: {data.num_interactions} interactions")
        print("wrote " + ", ".join(str(path) for path in written))
    return 0


def progress_text(tried: list[Trial]) -> str:
    """The search's best NDCG@10 by minutes spent, a line each time it improved: a best still rising at the end
    says more budget (RECOMMENDER_TUNING_TRIALS) would help."""
    from recommender.training.tuning import progress

    finished = sum(t.full for t in tried)
    lines = [
        f"search: {len(tried)} trials, {finished} fitted in full, {len(tried) - finished} judged early and stopped"
    ]
    last = None
    for minutes, ndcg in progress(tried):
        if ndcg != last:
            lines.append(f"  by minute {minutes:5.2f}: best NDCG@10 {ndcg:.4f}")
            last = ndcg
    return "\n".join(lines)


@contextmanager
def _progress_display() -> Iterator[Callable[[Progress], None]]:
    """A progress bar in a terminal; elsewhere the plain log lines, one per stage."""
    if not sys.stderr.isatty():
        yield lambda _progress: None
        return
    from tqdm import tqdm

    quiet = logging.getLogger("recommender")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # the bar says it all; warnings still show
    size = shutil.get_terminal_size()  # 80 x 24 where the terminal does not say (tqdm would then draw nothing)
    with tqdm(total=100, ncols=size.columns, nrows=size.lines, bar_format="{desc:<12} {bar} {n:.0f}% {elapsed}") as bar:

        def show(progress: Progress) -> None:
            bar.set_description_str(progress.stage)
            bar.update(progress.percent - bar.n)

        try:
            yield show
        finally:
            quiet.setLevel(level)


def import_files(settings: Settings, books_csv: Path | None, interactions_csv: Path | None) -> int:
    if books_csv is None and interactions_csv is None:
        print("recommender import: give --books and/or --interactions", file=sys.stderr)
        return 2
    try:
        books = importer.read_books(books_csv) if books_csv else importer.Parsed[Book]()
        interactions = (
            importer.read_interactions(interactions_csv) if interactions_csv else importer.Parsed[Interaction]()
        )
    except importer.FileError as exc:
        print(f"recommender import: nothing imported: {exc}", file=sys.stderr)
        return 2
    with database_url(settings) as dsn:
        return asyncio.run(_import(dsn, books, interactions))


async def _import(dsn: str, books: importer.Parsed[Book], interactions: importer.Parsed[Interaction]) -> int:
    async with await Database.connect(dsn, max_size=1) as db:
        await db.migrate()
        if interactions.rows:
            referenced = {i.book_id for i in interactions.rows}
            known = {b.book_id for b in books.rows} | await CatalogueStore(db).existing_book_ids(referenced)
            importer.check_books_exist(interactions, known)
        errors = books.errors() + interactions.errors()
        if errors:
            shown = errors[:50]
            more = f"\n... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
            read = f"{books.read} book rows and {interactions.read} interaction rows read"
            print(f"nothing imported ({read}); fix these rows:\n" + "\n".join(shown) + more, file=sys.stderr)
            return 1
        written = await CatalogueStore(db).import_data(books.rows, interactions.rows, books.columns)
    pairs = len({(i.user_id, i.book_id) for i in interactions.rows})
    print(
        f"read and imported {books.read} book rows and {interactions.read} interaction rows: {written.added} new, "
        f"{written.updated} updated and {pairs - written.added - written.updated} unchanged (user, book) pairs"
    )
    return 0
