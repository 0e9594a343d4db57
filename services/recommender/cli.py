"""The `recommender` command: serve, train, import."""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
import logging
import os
import shutil
import signal
import sys
from asyncio.subprocess import PIPE
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from recommender import logs
from recommender.claims import Claim, Claimed
from recommender.model.dataset import Book, Interaction, TrainingData
from recommender.processes import die_with_parent
from recommender.settings import Settings, SettingsError, load_settings
from recommender.storage import importer
from recommender.storage.database_server import EmbeddedPostgres, database, database_url, keep_running
from recommender.storage.db import Database, DatabaseUnavailable, RetrainLock
from recommender.tasks import cancelled
from recommender.training.progress import Progress, RetrainControl

if TYPE_CHECKING:
    from recommender.gateway.envoy import Envoy, Upstream
    from recommender.training.trainer import RetrainResult, Trainer

log = logging.getLogger("recommender")

WORKER_READY = "serving worker listening on port "
SERVER_CLAIM = "server.lock"  # in the data folder: the one `recommender serve` that owns it


def main(argv: list[str] | None = None) -> int:
    # The only children (pg_ctl, Envoy) exec at once, so gRPC's fork handlers have nothing to protect.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        upstreams = ",".join(getattr(args, "upstream", None) or []) or None
        given = {name: getattr(args, name, None) for name in Settings.model_fields}
        settings = load_settings(**(given | {"upstreams": upstreams}))
    except SettingsError as exc:
        print(f"recommender: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format)
    if settings.train_device == "gpu" and args.command in ("serve", "train", None):
        from recommender.model.cf import cuda_available

        if not cuda_available():
            print(
                "recommender: RECOMMENDER_TRAIN_DEVICE=gpu, but CUDA is not usable here: install the gpu extra "
                "(pip install -e '.[gpu]') on a machine with an NVIDIA GPU, or set it to auto or cpu",
                file=sys.stderr,
            )
            return 2
    # A closed terminal (SIGHUP) or a plain kill (SIGTERM) stops as cleanly as Ctrl-C: the embedded database and
    # Envoy are stopped on the way out. `serve` replaces these with its own handlers once its event loop runs.
    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    command = args.command or "serve"
    problem = _unusable_folders(settings, command)
    if problem:
        print(f"recommender: invalid setting: {problem}", file=sys.stderr)
        return 2
    try:
        if command == "serve":
            return serve(settings)
        if command == "worker":
            return asyncio.run(_worker(settings))
        if command == "gateway":
            return gateway(settings)
        if command == "train":
            return train(settings, args.force)
        if command == "evaluate":
            return evaluate(settings, args.books, args.interactions, args.out)
        if command == "tune":
            return tune(settings)
        return import_files(settings, args.books, args.interactions)
    except DatabaseUnavailable as exc:
        where = "DATABASE_URL" if settings.database_url else f"the embedded PostgreSQL in {settings.embedded_pgdata}"
        print(f"recommender: {where}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _unusable_folders(settings: Settings, command: str) -> str:
    """Why the data or artifacts folder cannot be used (created when missing), naming its setting; "" when both
    can. `evaluate` uses neither."""
    folders = {"RECOMMENDER_DATA_DIR": settings.data_dir}
    if command in ("serve", "train", "tune"):
        folders["RECOMMENDER_ARTIFACTS_DIR"] = settings.artifacts_dir
    if command == "evaluate":
        return ""
    for name, folder in folders.items():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not os.access(folder, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "not writable")
        except OSError as exc:
            return f"{name}: cannot use {str(folder)!r} as a folder ({exc.strerror or exc})"
    return ""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _alpha(value: str) -> float | str:
    return value if value == "auto" else float(value)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recommender", description="Hybrid book recommender (gRPC + JSON/HTTP).")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database-url", dest="database_url", help="PostgreSQL URL (env DATABASE_URL)")
    common.add_argument("--data-dir", type=Path, help="embedded database folder (env RECOMMENDER_DATA_DIR)")
    common.add_argument("--artifacts-dir", type=Path, help="model versions (env RECOMMENDER_ARTIFACTS_DIR)")
    training = argparse.ArgumentParser(add_help=False)
    training.add_argument("--alpha", type=_alpha, help="CF weight in the blend, 0-1, or auto (env RECOMMENDER_ALPHA)")
    training.add_argument("--train-threads", type=int, help="training threads (env RECOMMENDER_TRAIN_THREADS)")
    commands = parser.add_subparsers(dest="command")
    serve_cmd = commands.add_parser("serve", parents=[common, training], help="run the service (the default)")
    serve_cmd.add_argument("--grpc-host", help="gRPC listen host (env RECOMMENDER_GRPC_HOST)")
    serve_cmd.add_argument("--grpc-port", type=int, help="gRPC port (env RECOMMENDER_GRPC_PORT)")
    serve_cmd.add_argument("--http-host", help="JSON/HTTP gateway listen host (env RECOMMENDER_HTTP_HOST)")
    serve_cmd.add_argument("--http-port", type=int, help="JSON/HTTP gateway port (env RECOMMENDER_HTTP_PORT)")
    serve_cmd.add_argument(
        "--no-gateway",
        dest="gateway",
        action="store_const",
        const=False,
        help="gRPC only, for a replica behind `recommender gateway` (env RECOMMENDER_GATEWAY=false)",
    )
    gateway_cmd = commands.add_parser(
        "gateway", parents=[common], help="run the JSON/HTTP gateway (Envoy) alone, in front of replicas"
    )
    gateway_cmd.add_argument(
        "--upstream",
        dest="upstream",
        action="append",
        metavar="HOST:PORT",
        help="a replica's gRPC address; repeat for each (env RECOMMENDER_UPSTREAMS, comma-separated)",
    )
    gateway_cmd.add_argument("--http-host", help="listen host (env RECOMMENDER_HTTP_HOST)")
    gateway_cmd.add_argument("--http-port", type=int, help="listen port (env RECOMMENDER_HTTP_PORT)")
    train_cmd = commands.add_parser("train", parents=[common, training], help="train a new model version now")
    train_cmd.add_argument("--force", action="store_true", help="promote it even if it scores worse than the active")
    commands.add_parser("worker", parents=[common])  # a serving process started by `serve` (RECOMMENDER_WORKERS)
    commands.add_parser(
        "tune",
        parents=[common, training],
        help="search for a better configuration now (the next retrains start from it); nothing is released",
    )
    evaluate_cmd = commands.add_parser(
        "evaluate", parents=[training], help="run the evaluation protocol on CSV files in the import format"
    )
    evaluate_cmd.add_argument("--books", type=Path, required=True, help="CSV as for import")
    evaluate_cmd.add_argument("--interactions", type=Path, required=True, help="CSV as for import")
    evaluate_cmd.add_argument("--out", type=Path, help="write evaluation.csv and evaluation.png here")
    import_cmd = commands.add_parser("import", parents=[common], help="import books and interactions from CSV")
    import_cmd.add_argument("--books", type=Path, help="CSV: book_id,title[,authors,description,genres,published_year]")
    import_cmd.add_argument("--interactions", type=Path, help="CSV: user_id,book_id[,rating,timestamp]")
    return parser


def serve(settings: Settings) -> int:
    exposed = [
        name for name, host in (("GRPC", settings.grpc_host), ("HTTP", settings.http_host)) if not _loopback(host)
    ]
    if exposed and not settings.has_credentials:
        where = ", ".join(f"RECOMMENDER_{name}_HOST={getattr(settings, name.lower() + '_host')}" for name in exposed)
        print(
            f"recommender: refusing to serve on a non-loopback address ({where}) without credentials: anyone who "
            "can reach it could retrain or roll back. Set RECOMMENDER_API_KEY (or RECOMMENDER_JWT_SECRET / "
            "RECOMMENDER_JWT_PUBLIC_KEY), or listen on 127.0.0.1.",
            file=sys.stderr,
        )
        return 2
    try:
        claim = Claim.take(
            settings.data_dir / SERVER_CLAIM,
            f"the data folder {settings.data_dir.resolve()}",
            command="recommender serve",
        )
    except Claimed as exc:
        print(
            f"recommender: {exc}: stop it first, or give this one a data folder of its own (RECOMMENDER_DATA_DIR)",
            file=sys.stderr,
        )
        return 2
    log.info("data in %s", settings.data_dir.resolve())
    with claim, database(settings) as (dsn, embedded):
        return asyncio.run(_serve(settings, dsn, claim, embedded))


async def _serve(settings: Settings, dsn: str, claim: Claim, embedded: EmbeddedPostgres | None) -> int:
    """The gRPC server and Envoy together: both run, or the command exits non-zero saying why. Stopping ends
    Envoy, the workers, a running retrain and the fork server before the command returns. The embedded database
    (the data folder's, which this command owns) is started again whenever it stops."""
    from recommender.gateway.envoy import Envoy, GatewayError
    from recommender.serving.service import GrpcService
    from recommender.training.child import stop_fork_server

    service = GrpcService(settings, dsn)
    supervisor = (
        asyncio.create_task(keep_running(embedded, service.metrics.database_restarts.inc)) if embedded else None
    )
    envoy: Envoy | None = None
    stop = _stop_signal()
    workers: list[tuple[asyncio.subprocess.Process, int]] = []
    try:
        await service.start()
        claim.describe(command="recommender serve", grpc=f"{settings.grpc_host}:{service.port}")
        workers = await _start_workers(settings, dsn, settings.workers - 1)
        if not settings.gateway:
            await stop.wait()
            return 0
        envoy = Envoy(settings, service.port, [port for _, port in workers])
        await envoy.start()
        claim.describe(
            command="recommender serve",
            grpc=f"{settings.grpc_host}:{service.port}",
            http=f"{settings.http_host}:{settings.http_port}",
        )
        return await _run_until_stopped(envoy, stop)
    except Claimed as exc:
        log.error("%s", exc)
        return 2
    except (OSError, GatewayError) as exc:
        return _failed_to_start(exc)
    finally:
        if envoy is not None:
            await envoy.stop(grace=2.0)
        for process, _port in workers:
            process.terminate()
        await asyncio.gather(service.stop(), *(_ended(process) for process, _port in workers))
        await cancelled(supervisor)
        stop_fork_server()


async def _ended(process: asyncio.subprocess.Process, grace: float = 3.0) -> None:
    """Waits for a terminated child, killing it after `grace` seconds."""
    try:
        async with asyncio.timeout(grace):
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()


def _failed_to_start(exc: Exception) -> int:
    log.error("%s", exc if str(exc) else f"{type(exc).__name__} while starting")  # a timeout says nothing
    return 1


def _stop_signal() -> asyncio.Event:
    """An event set at SIGINT, SIGTERM or SIGHUP (from now on: start-up included)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _run_until_stopped(envoy: Envoy, stop: asyncio.Event) -> int:
    """0 when asked to stop; 1 when Envoy stopped on its own."""
    envoy_exit = asyncio.create_task(envoy.stopped())
    stop_requested = asyncio.create_task(stop.wait())
    await asyncio.wait({envoy_exit, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
    stop_requested.cancel()
    if envoy_exit.done():
        log.error("Envoy stopped unexpectedly (exit code %s): %s", envoy_exit.result(), envoy.reason())
        return 1
    envoy_exit.cancel()
    log.info("shutting down")
    return 0


def gateway(settings: Settings) -> int:
    """Envoy alone, balancing every call over the replicas' gRPC servers."""
    from recommender.gateway.envoy import Upstream

    try:
        upstreams = [Upstream.parse(text) for text in (settings.upstreams or "").split(",") if text.strip()]
    except ValueError as exc:
        print(f"recommender gateway: {exc}", file=sys.stderr)
        return 2
    if not upstreams:
        print("recommender gateway: give the replicas with --upstream HOST:PORT (once per replica)", file=sys.stderr)
        return 2
    return asyncio.run(_gateway(settings, upstreams))


async def _gateway(settings: Settings, upstreams: list[Upstream]) -> int:
    from recommender.gateway.envoy import Envoy, GatewayError

    envoy = Envoy(settings, 0, upstreams=upstreams)
    stop = _stop_signal()
    try:
        await envoy.start()
        log.info("balancing over %s", ", ".join(f"{u.host}:{u.port}" for u in upstreams))
        return await _run_until_stopped(envoy, stop)
    except Claimed as exc:
        log.error("%s: stop it first, or give this gateway another port", exc)
        return 2
    except (OSError, GatewayError) as exc:
        return _failed_to_start(exc)
    finally:
        await envoy.stop()


async def _start_workers(settings: Settings, dsn: str, count: int) -> list[tuple[asyncio.subprocess.Process, int]]:
    """Serving processes beside this one, on free loopback ports; each says its port once it serves."""
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "RECOMMENDER_GRPC_HOST": "127.0.0.1",
        "RECOMMENDER_GRPC_PORT": "0",
        "RECOMMENDER_DATA_DIR": str(settings.data_dir.resolve()),
        "RECOMMENDER_ARTIFACTS_DIR": str(settings.artifacts_dir.resolve()),
        "RECOMMENDER_WORKERS": "1",
    }
    started = []
    for _ in range(count):
        process = await asyncio.create_subprocess_exec(
            *die_with_parent(), sys.executable, "-m", "recommender.cli", "worker", env=env, stdout=PIPE
        )
        assert process.stdout is not None
        async with asyncio.timeout(120):
            line = (await process.stdout.readline()).decode()
        if not line.startswith(WORKER_READY):
            raise OSError(f"a serving worker did not start (exit code {await process.wait()})")
        started.append((process, int(line.removeprefix(WORKER_READY))))
    if started:
        log.info("%d serving workers on ports %s", len(started), ", ".join(str(port) for _, port in started))
    return started


async def _worker(settings: Settings) -> int:
    """One serving process beside the main one: it follows the registry's active version and never retrains."""
    from recommender.serving.service import GrpcService, Role

    service = GrpcService(settings, settings.database_url or "", role=Role.WORKER)
    stop = _stop_signal()
    try:
        await service.start()
        print(f"{WORKER_READY}{service.port}", flush=True)
        await stop.wait()
        return 0
    finally:
        await service.stop()


def train(settings: Settings, force: bool = False) -> int:
    from recommender.storage.artifacts import LocalArtifactStore
    from recommender.storage.registry import Outcome
    from recommender.training.child import TrainingFailed
    from recommender.training.trainer import make_trainer

    with database_url(settings) as dsn:
        asyncio.run(_prepare(settings, dsn))
        trainer = make_trainer(settings, dsn)
        with _progress_display() as on_progress:
            control = RetrainControl(force=force, on_progress=on_progress)
            try:
                result = asyncio.run(_train_holding_the_lock(dsn, trainer, control, settings.log_format))
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


async def _train_holding_the_lock(
    dsn: str, trainer: Trainer, control: RetrainControl, log_format: str
) -> RetrainResult | None:
    """The retrain in a child process (Ctrl-C kills it), holding the cluster's retrain lock; None when a retrain
    runs elsewhere. A failed retrain raises, saying why."""
    from recommender.training.child import ChildProcessTrainer, start_fork_server, stop_fork_server

    lock = RetrainLock(dsn)
    if not await lock.acquire():
        return None
    try:
        start_fork_server()
        return await ChildProcessTrainer(trainer, log_format)(control)
    finally:
        await lock.release()
        stop_fork_server()


def tune(settings: Settings) -> int:
    """A search as its own job (run it from cron or the schedule of your platform): the first version's budget of
    trials on the current data, recorded in the database for the next retrains."""
    from recommender.training.trainer import make_trainer

    with database_url(settings) as dsn:
        asyncio.run(_prepare(settings, dsn))
        os.nice(10)  # beside a service: its requests come first
        trainer = make_trainer(settings, dsn)
        best, tried = asyncio.run(trainer.search())
    print(
        f"searched {len(tried)} configurations: the best has NDCG@10 {best.metrics.ndcg:.4f}, and "
        f"{best.metrics.ndcg_cold:.4f} for readers with {trainer.policy.split.cold_history} books; the next "
        f"retrains start from {best.params.as_dict()}"
    )
    return 0


def evaluate(settings: Settings, books_csv: Path, interactions_csv: Path, out: Path | None) -> int:
    from recommender.training import compare
    from recommender.training.quality import Search
    from recommender.training.trainer import quality_policy, training_params

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
    policy = quality_policy(settings)
    print(
        f"{len(books.rows)} books, {data.num_interactions} interactions; holding out {policy.split.holdout:.0%} of "
        f"the liked books (unrated, or rated {policy.split.like_threshold:g}+) of users with at least "
        f"{policy.split.min_positives}, {'most recent' if policy.split.by_time else 'at random'}; "
        f"{policy.split.cold_share:.0%} of them cut to {policy.split.cold_history} training books (cold)"
    )
    search = Search(policy.tuning_trials, policy.tuning_seconds, policy.split.seed, policy.tune_blend)
    rows = compare.compare(data, training_params(settings), policy.split, search if policy.tuning else None)
    print(compare.table(rows))
    if out is not None:
        csv_path, png_path = compare.write(rows, out, f"{books_csv.parent.name}: {data.num_interactions} interactions")
        print(f"wrote {csv_path} and {png_path}")
    return 0


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
            known = {b.book_id for b in books.rows} | await db.existing_book_ids(referenced)
            importer.check_books_exist(interactions, known)
        errors = books.errors() + interactions.errors()
        if errors:
            shown = errors[:50]
            more = f"\n... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
            read = f"{books.read} book rows and {interactions.read} interaction rows read"
            print(f"nothing imported ({read}); fix these rows:\n" + "\n".join(shown) + more, file=sys.stderr)
            return 1
        written = await db.import_data(books.rows, interactions.rows, books.columns)
    pairs = len({(i.user_id, i.book_id) for i in interactions.rows})
    print(
        f"read and imported {books.read} book rows and {interactions.read} interaction rows: {written.added} new, "
        f"{written.updated} updated and {pairs - written.added - written.updated} unchanged (user, book) pairs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
