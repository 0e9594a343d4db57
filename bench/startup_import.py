"""Start-up and import: `.venv/bin/python -m bench.startup_import [--interactions 1000000]`.

Start-up: seconds from `python server.py` to the first healthy answer through Envoy, over the 1,000,000-interaction
catalogue with its model already trained (and its embedded PostgreSQL stopped, as after a reboot). Import: the
seconds `recommender import` takes for the same catalogue as CSV files into an empty database, and the rate.
Writes bench/results/startup_import.*.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench import convert
from bench.harness import MEDIUM, Size, cli, service, write_results
from recommender.storage import demo


def startup_seconds(size: Size) -> float:
    with service(size):  # trains the first model when the catalogue is new
        pass
    started = time.perf_counter()
    with service(size):
        return time.perf_counter() - started


def import_seconds(size: Size, workdir: Path) -> float:
    catalogue = demo.generate(7, size.books, size.users, size.interactions)
    convert.write_import_files(workdir, catalogue.books, catalogue.interactions)
    books, interactions = workdir / "books.csv", workdir / "interactions.csv"
    started = time.perf_counter()
    cli(workdir, "import", "--books", str(books), "--interactions", str(interactions))
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
