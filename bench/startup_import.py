"""Start-up and import: `.venv/bin/python -m bench.startup_import [--interactions 1000000]`.

Start-up: seconds from `python server.py` to the first healthy answer through Envoy, over the 1,000,000-interaction
catalogue with its model already trained (and its embedded PostgreSQL stopped, as after a reboot). Import: the
seconds `recommender import` takes for the same catalogue as CSV files into an empty database, and the rate.
Writes bench/results/startup_import.*.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import MEDIUM, ROOT, Size, service, write_results
from recommender import demo


def startup_seconds(size: Size) -> float:
    with service(size):  # trains the first model when the catalogue is new
        pass
    started = time.perf_counter()
    with service(size):
        return time.perf_counter() - started


def import_seconds(size: Size, workdir: Path) -> float:
    catalogue = demo.generate(7, size.books, size.users, size.interactions)
    books, interactions = workdir / "books.csv", workdir / "interactions.csv"
    with open(books, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["book_id", "title", "authors", "description", "genres", "published_year"])
        for b in catalogue.books:
            writer.writerow([b.book_id, b.title, b.authors, b.description, "|".join(b.genres), b.published_year])
    with open(interactions, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "book_id", "rating", "timestamp"])
        for i in catalogue.interactions:
            writer.writerow([i.user_id, i.book_id, "" if i.rating is None else i.rating, int(i.timestamp or 0)])
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("RECOMMENDER_")}
    env["RECOMMENDER_DATA_DIR"] = str(workdir / "var")
    command = [sys.executable, "-m", "recommender.cli", "import", "--books", str(books), "--interactions"]
    started = time.perf_counter()
    subprocess.run([*command, str(interactions)], cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interactions", type=int, default=MEDIUM.interactions)
    args = parser.parse_args()
    size = Size(MEDIUM.books, args.interactions // 20, args.interactions)
    start = startup_seconds(size)
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        imported = import_seconds(size, Path(tmp))
    write_results(
        "startup_import",
        "Start-up with an existing model, and import",
        ["interactions", "start-up s", "import s", "import interactions/s"],
        [[size.interactions, start, imported, size.interactions / imported]],
        "Start-up includes starting the embedded PostgreSQL, loading and warming the model and starting Envoy. "
        "Import includes starting an embedded PostgreSQL for an empty data folder, reading and checking every "
        "row, and the merge into one row per (user, book).",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
