"""Process wiring for the gRPC side: database, model handle, servicer, health and reflection on one grpc.aio server."""

from __future__ import annotations

import asyncio
import logging
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import _async as health_aio  # what `health.aio` re-exports
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server
from threadpoolctl import threadpool_limits

from recommender import demo
from recommender.schedule import Schedule
from recommender.serving.auth import AuthInterceptor, Credentials
from recommender.serving.cluster import Cluster
from recommender.serving.freshness import FreshData
from recommender.serving.manager import ModelBuilder, ModelManager
from recommender.serving.scheduler import Scheduler
from recommender.serving.servicer import RecommenderServicer
from recommender.serving.telemetry import Metrics, ObservingInterceptor
from recommender.serving.versions import Versions
from recommender.settings import Settings
from recommender.storage.artifacts import ArtifactStore
from recommender.storage.db import Database
from recommender.storage.registry import Registry
from recommender.training.isolation import IsolatedTrainer
from recommender.training.trainer import Trainer, quality_policy, training_params
from recommender.v1 import SERVICE_NAME, recommender_pb2_grpc

log = logging.getLogger(__name__)

# RPCs that need the admin credential when one is configured.
STATE_CHANGING = {"Retrain", "Rollback", "RecordInteractions", "UpsertBooks"}


async def prepare_database(db: Database, settings: Settings) -> None:
    """Migrates, and on first start fills an empty database with the demo catalogue."""
    await db.migrate()
    if (await db.counts())["books"] > 0:
        return
    catalogue = await asyncio.to_thread(
        demo.generate, settings.demo_seed, settings.demo_books, settings.demo_users, settings.demo_interactions
    )
    if await db.seed_if_empty(catalogue.books, catalogue.interactions):
        log.info(
            "the database was empty: filled it with the demo catalogue (%d books, %d users, %d interactions); "
            "`recommender import` loads your own",
            len(catalogue.books),
            settings.demo_users,
            len(catalogue.interactions),
        )


def make_trainer(settings: Settings, dsn: str) -> Trainer:
    return Trainer(
        dsn,
        ArtifactStore(settings.artifacts_dir),
        training_params(settings),
        settings.keep_versions,
        quality_policy(settings),
        shared_artifacts=settings.artifact_store == "postgres",
    )


class GrpcService:
    """`await start()`, then serve on `port` until `await stop()`."""

    def __init__(self, settings: Settings, dsn: str, build: ModelBuilder | None = None, worker: bool = False) -> None:
        """`worker`: a serving process beside the main one: it never retrains, and follows the registry."""
        self.settings = settings
        self.worker = worker
        self.dsn = dsn
        self.port = 0
        self._build: ModelBuilder = build or IsolatedTrainer(make_trainer(settings, dsn), settings.log_format)
        self._db: Database | None = None
        self._server: grpc.aio.Server | None = None
        self._manager: ModelManager | None = None
        self._store = ArtifactStore(settings.artifacts_dir)
        self._health = health_aio.HealthServicer()
        self.metrics = Metrics()
        self._metrics_server: WSGIServer | None = None
        self._scheduler: Scheduler | None = None
        self._scheduler_task: asyncio.Task[None] | None = None
        self._cluster: Cluster | None = None
        self._fresh: FreshData | None = None

    @property
    def manager(self) -> ModelManager:
        assert self._manager is not None, "start() first"
        return self._manager

    async def start(self) -> None:
        # Requests run one after another on the event loop: one BLAS thread serves a request as fast as two
        # (0.43 ms against 0.47 ms for recommend at 10,000 books) and leaves the other core to Envoy and retrains.
        threadpool_limits(1, user_api="blas")
        store = self._store
        log.info("model artifacts in %s", store.root.resolve())
        self._db = await Database.connect(self.dsn)
        if self.worker:
            await self._db.migrate()  # the main process fills an empty database
        else:
            await prepare_database(self._db, self.settings)
        shared = self._db if self.settings.artifact_store == "postgres" else None
        versions = Versions(Registry(self._db), store, shared)
        try:
            model = await versions.load_active()
        except OSError as exc:
            raise OSError(f"cannot read the model artifacts in {store.root}: {exc}") from exc
        loop = asyncio.get_running_loop()

        def on_change() -> None:  # called from the retrain thread too
            self._serving_changed()
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._publish_health()))

        self._manager = ModelManager(
            model,
            self._build,
            on_change,
            on_stage_done=lambda stage, seconds: self.metrics.stage_seconds.labels(stage).observe(seconds),
            on_finished=lambda result: self.metrics.retrains.labels(result.outcome.value).inc(),
        )
        self._serving_changed()
        await self._publish_health()
        self._fresh = FreshData(self._db)
        await self._fresh.start(model)
        self._cluster = Cluster(self.dsn, self._db, self._manager, versions, self._fresh, retrains=not self.worker)
        await self._cluster.start()
        if not self.worker:
            self._start_metrics_server()
        if self.settings.retrain_schedule and not self.worker:
            self._start_scheduler(Schedule.parse(self.settings.retrain_schedule), versions.registry, self._db)
        credentials = Credentials.from_settings(self.settings)
        # No SO_REUSEPORT: a second server on the same port must fail, not silently share it.
        server = grpc.aio.server(
            interceptors=[ObservingInterceptor(self.metrics), AuthInterceptor(credentials, self._needs_credentials)],
            options=[("grpc.so_reuseport", 0)],
        )
        servicer = RecommenderServicer(
            self._manager,
            versions,
            self._db,
            self._cluster,
            self._fresh,
            self.settings.start_alpha,
            next_scheduled_retrain=lambda: self._scheduler.next_tick if self._scheduler else None,
        )
        recommender_pb2_grpc.add_RecommenderServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError:  # grpc raises rather than returning 0 in recent versions
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen for gRPC on {address}: the port is in use or the host is not local")
        await server.start()
        self._server = server
        log.info("gRPC server listening on %s:%d", self.settings.grpc_host, self.port)
        if model is None and not self.worker and await self._cluster.start_retrain():
            log.info("no model artifact yet: training the first model; Recommend is UNAVAILABLE until it is ready")
        elif model is None:
            log.info("no model yet: waiting for another process to train the first one")
        else:
            log.info("serving model version %s", model.meta.version)

    def _needs_credentials(self, method: str) -> bool:
        """Calls that change state always; the Recommender's reads when RECOMMENDER_AUTH_READS is set. Health
        checks and reflection stay open for probes and tools."""
        name = method.rsplit("/", 1)[-1]
        if not method.startswith(f"/{SERVICE_NAME}/") or name == "Health":
            return False
        return name in STATE_CHANGING or self.settings.auth_reads

    def _serving_changed(self) -> None:
        assert self._manager is not None
        model, state = self._manager.model, self._manager.state
        self.metrics.retraining.set(1 if state.running else 0)
        if model is not None:
            self._store.mark_serving(model.meta.version)
            self.metrics.serving(model)

    def _start_metrics_server(self) -> None:
        server, _thread = start_http_server(
            self.settings.metrics_port, self.settings.metrics_host, registry=self.metrics.registry
        )
        self._metrics_server = server
        address = f"{self.settings.metrics_host}:{server.server_port}"
        published = self.settings.data_dir / "metrics-address"
        published.parent.mkdir(parents=True, exist_ok=True)
        published.write_text(address + "\n", encoding="utf-8")
        log.info("Prometheus metrics on http://%s/metrics (also in %s)", address, published.resolve())

    def _start_scheduler(self, schedule: Schedule, registry: Registry, db: Database) -> None:
        async def new_interactions() -> int:
            active = await registry.active()
            return await db.interactions_changed_since(active.created_at if active else None)

        assert self._cluster is not None
        self._scheduler = Scheduler(
            schedule, self._cluster, new_interactions, self.settings.retrain_min_new_interactions
        )
        self._scheduler_task = asyncio.create_task(self._scheduler.run())
        log.info("retraining on the schedule %r", schedule.text)

    async def _publish_health(self) -> None:
        """gRPC health: the Recommender serves once it has a model (readiness: Envoy's checks, Kubernetes'
        readiness probe); the server as a whole ("") serves while it runs (liveness: a process waiting for its
        first model must not be restarted)."""
        serving = self._manager is not None and self._manager.model is not None
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self._health.set(SERVICE_NAME, status)
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 5.0) -> None:
        """In-flight calls get `grace` seconds; a running retrain stops at its next checkpoint."""
        if self._scheduler_task is not None:
            self._scheduler_task.cancel()
        if self._server is not None:
            await self._health.enter_graceful_shutdown()
            await self._server.stop(grace)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self._manager is not None:
            await asyncio.to_thread(self._manager.shutdown)
            self._store.unmark_serving()
        if self._cluster is not None:
            await self._cluster.stop()  # after the retrain stopped: frees the retrain lock
        if self._fresh is not None:
            await self._fresh.stop()
        if self._db is not None:
            await self._db.close()
