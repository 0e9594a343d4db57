"""Prometheus metrics of the service, each serving process's /metrics endpoint, and the interceptor that times every
call and tags its log lines.

Every serving process (the main one, each worker, each replica) counts its own calls on its own endpoint, and all
the endpoints of one data folder are listed in `<data dir>/metrics-targets.json`, in the format of Prometheus's
file-based service discovery: one scrape configuration finds them all, and their sum counts every request.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from recommender.answers.statistics import online_intervals
from recommender.logs import request_id
from recommender.model.hybrid import HybridModel
from recommender.processes import is_alive
from recommender.serving.interceptors import Behaviour, UnaryInterceptor
from recommender.storage.sums import OnlineSums

STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


log = logging.getLogger(__name__)

TARGETS_FILE = "metrics-targets.json"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServiceMetrics:
    """Every metric the service exports, on a registry of its own (several services may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "recommender_requests", "RPCs answered, by method and status code", ["method", "code"], registry=r
        )
        self.latency = Histogram(
            "recommender_request_seconds", "RPC latency, by method and status code", ["method", "code"], registry=r
        )
        self.batch_size = Histogram(
            "recommender_batch_size",
            "requests answered by one call of the model, by method",
            ["method"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.retrains = Counter(
            "recommender_retrains",
            "finished retrains, by outcome (promoted, canary, rejected, failed)",
            ["outcome"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "recommender_retrain_stage_seconds", "time per retrain stage", ["stage"], buckets=STAGE_BUCKETS, registry=r
        )
        self.retraining = Gauge("recommender_retrain_in_progress", "1 while a retrain runs", registry=r)
        self.database_restarts = Counter(
            "recommender_database_restarts",
            "times the embedded PostgreSQL was found stopped and started again by the service that owns it",
            registry=r,
        )
        self.model = Info("recommender_model", "the version that serves", registry=r)
        self.offline = Gauge(
            "recommender_model_offline_metric", "the serving version's offline metrics", ["metric"], registry=r
        )
        self.data_size = Gauge(
            "recommender_model_data_size", "what the serving version was trained on", ["kind"], registry=r
        )
        self._trained_at = 0.0
        age = Gauge("recommender_model_age_seconds", "time since the serving version was trained", registry=r)
        age.set_function(lambda: time.time() - self._trained_at if self._trained_at else 0.0)

        self.impressions = Counter(
            "recommender_impressions",
            "Recommend answers recorded for online metrics (written), or lost (dropped: queue full or database away)",
            ["result"],
            registry=r,
        )
        self.online = Gauge(
            "recommender_online_metric",
            "the served versions' online metrics over the last 24 hours, with their 95% confidence bounds",
            ["version", "metric", "bound"],
            registry=r,
        )
        self.online_impressions = Gauge(
            "recommender_online_impressions",
            "the served versions' impressions in the last 24 hours",
            ["version"],
            registry=r,
        )

    def online_sums(self, sums: dict[str, OnlineSums]) -> None:
        """The served versions' online metrics (the others are dropped)."""
        self.online.clear()
        self.online_impressions.clear()
        for version, of_version in sums.items():
            self.online_impressions.labels(version).set(of_version.impressions)
            for metric, interval in online_intervals(of_version).items():
                for bound in ("value", "low", "high"):
                    self.online.labels(version, metric, bound).set(getattr(interval, bound))

    def follow_fresh_data(self, stale_users: Callable[[], int]) -> None:
        """`stale_users()`: users answered from a history newer than the serving version (-1: all may be)."""
        Gauge(
            "recommender_users_newer_than_model",
            "users answered from a history newer than the serving version (folded in); -1: every user may be",
            registry=self.registry,
        ).set_function(stale_users)

    def serving(self, model: HybridModel) -> None:
        self.model.info({"version": model.meta.version, "alpha": f"{model.alpha:g}"})
        for name, value in model.meta.metrics.items():
            self.offline.labels(name).set(value)
        sizes = {"users": model.cf.num_users, "books": model.content.num_books, "interactions": model.cf.nnz}
        for kind, value in sizes.items():
            self.data_size.labels(kind).set(value)
        self._trained_at = model.meta.trained_at.timestamp()


class ObservingInterceptor(UnaryInterceptor):
    """Counts and times every call by method and code, and gives it a request id: Envoy's `x-request-id` (or a new
    one) is set for the call's log lines and sent back in the trailing metadata (Envoy sets the HTTP header).

    A call that fails on the service's side is one log line; an unexpected exception becomes INTERNAL
    "internal error (request id ...)" without internals, with its traceback logged at most once a minute per kind
    of failure, so that the log stays readable through an outage."""

    def __init__(self, metrics: ServiceMetrics, traceback_every: float = 60.0) -> None:
        self._metrics = metrics
        self._tracebacks = Throttle(traceback_every)

    def wrap(self, details: grpc.HandlerCallDetails, behaviour: Behaviour) -> Behaviour | None:
        metadata = dict(details.invocation_metadata or ())
        given = str(metadata.get("x-request-id") or "")
        call_id = given if REQUEST_ID.match(given) else str(uuid.uuid4())
        method = details.method.rsplit("/", 1)[-1]

        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            token = request_id.set(call_id)
            started, code = time.perf_counter(), "OK"
            try:
                # In the trailers, which go with the status anyway (headers sent ahead cost a frame of their own);
                # Envoy puts it in HTTP answers' headers itself.
                context.set_trailing_metadata((("x-request-id", call_id),))
                return await behaviour(request, context)
            except grpc.aio.AbortError:
                code = _code_name(context.code())
                if code in SERVICE_SIDE:
                    log.warning("%s answered %s: %s", method, code, context.details())
                raise
            except Exception as exc:
                code = "INTERNAL"
                kind = f"{type(exc).__name__} in {method}"
                if self._tracebacks.allows(kind):
                    log.exception("%s failed (request id %s)", method, call_id)
                else:
                    log.error("%s failed: %s: %s (traceback logged within the minute)", method, type(exc).__name__, exc)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {call_id})")
            finally:
                self._metrics.requests.labels(method, code).inc()
                self._metrics.latency.labels(method, code).observe(time.perf_counter() - started)
                request_id.reset(token)

        return observed


# Codes that say the service failed, not the client: each such answer is one log line.
SERVICE_SIDE = {"UNAVAILABLE", "INTERNAL", "UNKNOWN", "DATA_LOSS"}
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class Throttle:
    """Allows one event of each kind per `seconds`."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._last: dict[str, float] = {}

    def allows(self, kind: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(kind, -self._seconds) < self._seconds:
            return False
        self._last[kind] = now
        return True


def _code_name(code: object) -> str:
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


class MetricsEndpoint:
    """This process's Prometheus endpoint, listed in the data folder's targets file while it runs."""

    def __init__(self, metrics: ServiceMetrics, host: str, port: int, data_dir: Path, role: str) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self._targets = data_dir / TARGETS_FILE
        self._role = role
        self._server: WSGIServer | None = None
        self.address = ""

    def start(self) -> None:
        server, _thread = start_http_server(self._port, self._host, registry=self._metrics.registry)
        self._server = server
        self.address = f"{self._host}:{server.server_port}"
        try:
            self._update(add=True)
        except OSError as exc:
            log.warning("cannot list this process's metrics endpoint in %s: %s", self._targets, exc)
        log.info("Prometheus metrics on http://%s/metrics (listed in %s)", self.address, self._targets.resolve())

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        with contextlib.suppress(OSError):
            self._update(add=False)

    def _update(self, add: bool) -> None:
        """Rewrites the targets file under a lock: this process in (or out), entries of dead local processes out."""
        self._targets.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self._targets.with_name(f".{TARGETS_FILE}.lock")):
            entries = [entry for entry in read_targets(self._targets) if _still_running(entry)]
            entries = [entry for entry in entries if entry.get("targets") != [self.address]]
            if add:
                labels = {"role": self._role, "pid": str(os.getpid()), "host": socket.gethostname()}
                entries.append({"targets": [self.address], "labels": labels})
            tmp = self._targets.with_name(f".{TARGETS_FILE}.tmp")
            tmp.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, self._targets)


def read_targets(path: Path) -> list[dict[str, Any]]:
    """The entries of a targets file (empty when there is none or it cannot be read)."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return (
        [e for e in entries if isinstance(e, dict) and isinstance(e.get("labels"), dict)]
        if isinstance(entries, list)
        else []
    )


def _still_running(entry: dict[str, Any]) -> bool:
    labels = entry["labels"]
    if labels.get("host") != socket.gethostname() or not str(labels.get("pid", "")).isdigit():
        return True  # another host's: not ours to judge
    return is_alive(int(labels["pid"]))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
