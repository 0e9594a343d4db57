"""Prometheus metrics of the service, and the interceptor that times every call and tags its log lines."""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from recommender.logs import request_id
from recommender.model.hybrid import HybridModel
from recommender.serving.interceptors import Behaviour, UnaryInterceptor

STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class Metrics:
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
        self.retrains = Counter(
            "recommender_retrains",
            "finished retrains, by outcome (promoted, rejected, failed)",
            ["outcome"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "recommender_retrain_stage_seconds", "time per retrain stage", ["stage"], buckets=STAGE_BUCKETS, registry=r
        )
        self.retraining = Gauge("recommender_retrain_in_progress", "1 while a retrain runs", registry=r)
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
    one) is set for the call's log lines and sent back in the response metadata (Envoy makes it a header)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def wrap(self, details: grpc.HandlerCallDetails, behaviour: Behaviour) -> Behaviour | None:
        metadata = dict(details.invocation_metadata or ())
        call_id = str(metadata.get("x-request-id") or uuid.uuid4())
        method = details.method.rsplit("/", 1)[-1]

        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            token = request_id.set(call_id)
            started, code = time.perf_counter(), "OK"
            try:
                await context.send_initial_metadata((("x-request-id", call_id),))
                return await behaviour(request, context)
            except grpc.aio.AbortError:
                code = _code_name(context.code())
                raise
            except Exception:
                code = "UNKNOWN"
                raise
            finally:
                self._metrics.requests.labels(method, code).inc()
                self._metrics.latency.labels(method, code).observe(time.perf_counter() - started)
                request_id.reset(token)

        return observed


def _code_name(code: object) -> str:
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
