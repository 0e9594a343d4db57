"""The long-running commands: `serve` (the gRPC server, its workers, Envoy, and the embedded database kept
running), `worker` (a serving process beside it) and `gateway` (Envoy alone in front of replicas). Each runs until
asked to stop, and stops everything it started."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import sys
from asyncio.subprocess import PIPE
from typing import TYPE_CHECKING

from recommender.claims import Claim, Claimed
from recommender.cli.capacity import serving_processes
from recommender.processes import die_with_parent
from recommender.settings import Settings
from recommender.storage.database_server import EmbeddedPostgres, database, keep_running
from recommender.tasks import cancelled

if TYPE_CHECKING:
    from recommender.gateway.config import Upstream
    from recommender.gateway.envoy import Envoy

log = logging.getLogger("recommender")

WORKER_READY = "serving worker listening on port "
SERVER_CLAIM = "server.lock"  # in the data folder: the one `recommender serve` that owns it


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


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
        workers = await _start_workers(settings, dsn, serving_processes(settings.workers) - 1)
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
    from recommender.gateway.config import Upstream

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


def worker(settings: Settings) -> int:
    return asyncio.run(_worker(settings))


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
