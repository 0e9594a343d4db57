"""What the online figures cost as the record grows: the same reads (the sums of ListModels and ModelInfo, a
canary's period, the dashboard's 48-hour series in 10-minute buckets and OnlineHistory's default hourly one) and
the same steady trickle (1,000 new impressions and 50 events between two reads, what the service writes in about a
second at 1,000 requests/s) over a day of 10,000 and of 10,000,000 impressions (20,000 readers, two versions, 2%
clicked), on an embedded PostgreSQL of its own.

    python -m bench.online_volume [--volumes 10000,10000000] [--reads 20]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import numpy as np

from bench.harness import percentiles, write_results
from bench.servers import embedded_server
from recommender.storage.db import Database
from recommender.storage.feedback import Feedback, Impression, OnlineStore

READERS = 20_000
COLUMNS = [
    "impressions",
    "fill s",
    "first roll-up s",
    "trickle roll-up p50 ms",
    "kept sums p50 ms",
    "kept sums p99 ms",
    "3 h sums p50 ms",
    "48 h series, 10 min, p50 ms",
    "48 h series, 10 min, p99 ms",
    "48 h series, 60 min, p50 ms",
    "roll-up rows",
]
WINDOW = timedelta(days=7)

# A day of answers made by PostgreSQL itself (a Python loop would take longer than the measurement); time-ordered
# ids (uuidv7, PostgreSQL 18), so that filling the primary key does not dominate the benchmark.
_FILL = """
INSERT INTO impressions (recommendation_id, user_id, version, books, shown_at)
SELECT uuidv7(), 1 + (random() * ($2 - 1))::int, CASE WHEN random() < 0.9 THEN 'v1' ELSE 'v2' END,
       ARRAY[1 + g % 5000, 2 + g % 5000, 3 + g % 5000, 4 + g % 5000, 5 + g % 5000],
       now() - random() * interval '1 day'
FROM generate_series(1, $1) AS g
"""
_CLICKS = """
INSERT INTO feedback (recommendation_id, book_id, event, occurred_at)
SELECT recommendation_id, books[1 + (random() * 4)::int], 'click', shown_at + interval '10 seconds'
FROM impressions TABLESAMPLE BERNOULLI (2)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", default="10000,10000000")
    parser.add_argument("--reads", type=int, default=20)
    args = parser.parse_args()
    rows = [asyncio.run(measure(int(volume), args.reads)) for volume in args.volumes.split(",")]
    write_results(
        "online_volume",
        "The online figures' cost by the size of the record (a day of impressions, 20,000 readers)",
        COLUMNS,
        rows,
        "Each read rolls up what arrived since the last one first (1,000 impressions and 50 events), as the service's "
        "reads do. The first roll-up is the catch-up of a record that was never rolled up (a migration's).",
    )
    return 0


async def measure(volume: int, reads: int) -> list[object]:
    with tempfile.TemporaryDirectory(prefix="recommender-online-") as folder, embedded_server(Path(folder)) as url:
        async with await Database.connect(url) as db:
            await db.migrate()
            store = OnlineStore(db, WINDOW)
            started = time.perf_counter()
            filler = await asyncpg.connect(url)  # no statement timeout: a million rows with their indexes take a while
            try:
                for start in range(0, volume, 500_000):
                    await filler.execute(_FILL, min(500_000, volume - start), READERS)
                await filler.execute(_CLICKS)
            finally:
                await filler.close()
            filled = time.perf_counter() - started
            started = time.perf_counter()
            await store.roll_up()
            first = time.perf_counter() - started
            trickle, everything, period, series, hourly = [], [], [], [], []
            rng = np.random.default_rng(volume)
            for _ in range(reads):
                await trickle_in(store, rng)
                trickle.append(await timed(store.roll_up()))
                everything.append(await timed(store.sums()))
                period.append(await timed(store.sums(datetime.now(UTC) - timedelta(hours=3, minutes=7))))
                since = datetime.now(UTC) - timedelta(hours=48)
                series.append(await timed(store.series(since, timedelta(minutes=10))))  # the dashboard's
                hourly.append(await timed(store.series(since, timedelta(hours=1))))  # OnlineHistory's default
            rollups = await db.fetchval("SELECT count(*) FROM online_rollups")
    row: list[object] = [volume, filled, first, percentiles(trickle)[0], *percentiles(everything)[::2]]
    row += [percentiles(period)[0], *percentiles(series)[::2], percentiles(hourly)[0], rollups]
    print(row, flush=True)
    return row


async def trickle_in(store: OnlineStore, rng: np.random.Generator) -> None:
    now = datetime.now(UTC)
    answers = [
        Impression(uuid.uuid4(), int(rng.integers(1, READERS)), "v1", [1, 2, 3, 4, 5], now) for _ in range(1_000)
    ]
    await store.add_impressions(answers)
    await store.add_feedback([Feedback(a.recommendation_id, 2, "click", now) for a in answers[:50]])


async def timed(work: object) -> float:
    started = time.perf_counter()
    await work  # type: ignore[misc]
    return time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())
