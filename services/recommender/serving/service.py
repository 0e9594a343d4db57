"""Process wiring for the gRPC side, in two assemblies: the serving node every process runs (database, version
manager, fresh data, the cluster's notices, metrics, the gRPC server with health and reflection), and the retrain
coordinator and schedule that only processes that may train add to it."""

from __future__ import annotations

import asyncio
import functools
import logging
from enum import StrEnum

import grpc
from grpc_health.v1 import _async as health_aio  # what `health.aio` re-exports
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from threadpoolctl import threadpool_limits

from recommender.answers.judge import CanaryJudge, CanaryPolicy
from recommender.answers.queue import ImpressionLog
from recommender.answers.record import AnswersRecord
from recommender.answers.statistics import SequentialTest
from recommender.answers.view import OnlineView
from recommender.model.hybrid import HybridModel
from recommender.model.validation import MAX_BODY_BYTES, MAX_HEADER_KB
from recommender.schedule import Schedule
from recommender.serving.auth import AuthInterceptor, Credentials
from recommender.serving.batching import BatchPolicy
from recommender.serving.cluster import Cluster
from recommender.serving.freshness import FreshData
from recommender.serving.servicer import RecommenderServicer
from recommender.serving.telemetry import MetricsEndpoint, ObservingInterceptor, ServiceMetrics
from recommender.serving.versions import VersionManager
from recommender.settings import Settings
from recommender.storage.artifacts import ArtifactStore, open_store
from recommender.storage.catalogue import CatalogueStore
from recommender.storage.db import Database
from recommender.storage.feedback import OnlineStore
from recommender.storage.registry import Registry
from recommender.storage.seed import DemoSize, prepare_database
from recommender.storage.snapshot import SnapshotStore
from recommender.training.child import ChildProcessTrainer
from recommender.training.config import make_trainer
from recommender.training.coordinator import RetrainCoordinator
from recommender.training.route import RetrainRoute, RetrainRunner
from recommender.training.scheduler import Scheduler
from recommender.training.trainer import tidy
from recommender.v1 import SERVICE_NAME, STATE_CHANGING, recommender_pb2_grpc

log = logging.getLogger(__name__)


class Role(StrEnum):
    MAIN = "main"  # serves, and retrains: `recommender serve`, each replica
    WORKER = "worker"  # serves only, following the registry: RECOMMENDER_WORKERS beside a main process


class GrpcService:
    """`await start()`, then serve on `port` until `await stop()` (bounded: a few seconds in any state)."""

    def __init__(self, settings: Settings, dsn: str, trainer: RetrainRunner | None = None, role: Role = Role.MAIN):
        """`trainer`: how the main role runs a retrain (default: a child process per retrain)."""
        self.settings = settings
        self.dsn = dsn
        self.role = role
        self.port = 0
        self.metrics = ServiceMetrics()
        self._trainer = trainer
        self._db: Database | None = None
        self._versions: VersionManager | None = None
        self.coordinator: RetrainCoordinator | None = None
        self._fresh: FreshData | None = None
        self._cluster: Cluster | None = None
        self._scheduler: Scheduler | None = None
        self._scheduler_task: asyncio.Task[None] | None = None
        self._endpoint: MetricsEndpoint | None = None
        self._online: OnlineStore | None = None
        self._view: OnlineView | None = None
        self._impressions: ImpressionLog | None = None
        self._judge: CanaryJudge | None = None
        self._server: grpc.aio.Server | None = None
        self._store: ArtifactStore | None = None
        self._health = health_aio.HealthServicer()
        self._health_update: asyncio.Future[None] | None = None

    @property
    def versions(self) -> VersionManager:
        assert self._versions is not None, "start() first"
        return self._versions

    async def start(self) -> None:
        # Requests run one after another on the event loop: one BLAS thread serves a request as fast as two
        # (0.43 ms against 0.47 ms for recommend at 10,000 books) and leaves the other core to Envoy and retrains.
        threadpool_limits(1, user_api="blas")
        settings = self.settings
        self._db = db = await Database.connect(self.dsn)
        trains = self.role is Role.MAIN
        if trains:
            size = DemoSize(settings.demo_seed, settings.demo_books, settings.demo_users, settings.demo_interactions)
            await prepare_database(db, size)
        else:
            await db.migrate()  # the main process fills an empty database
        self._store = store = open_store(settings.artifacts_dir, db if settings.artifact_store == "postgres" else None)
        log.info("model artifacts in %s", store.root.resolve())
        registry = Registry(db)
        self._fresh = FreshData(SnapshotStore(db), CatalogueStore(db))
        self._versions = versions = VersionManager(registry, store, self._fresh.prepared)
        versions.subscribe(self._served)
        if trains:
            self.coordinator = self._coordinator(store, registry)
            await self.coordinator.clean_up()
        model = await versions.start()
        await self._fresh.start(model)
        versions.subscribe(self._fresh.on_swap)
        fresh = self._fresh
        self.metrics.follow_fresh_data(lambda: fresh.stale_users)
        coordinator = self.coordinator
        self._cluster = Cluster(
            self.dsn, db, versions, self._fresh, retraining_here=lambda: coordinator is not None and coordinator.running
        )
        await self._cluster.start()
        await self._publish_health()
        self._endpoint = MetricsEndpoint(
            self.metrics,
            settings.metrics_host,
            settings.metrics_port if trains else 0,
            settings.data_dir,
            self.role.value,
        )
        self._endpoint.start()
        if trains and settings.retrain_schedule:
            self._start_scheduler(Schedule.parse(settings.retrain_schedule), registry, db)
        self._start_online(db, trains)
        await self._serve_grpc()
        if model is None and self.coordinator is not None and await self.coordinator.start():
            log.info("no model yet: training the first model; Recommend is UNAVAILABLE until it is ready")
        elif model is None:
            log.info("no model yet: waiting for another process to train the first one")

    def _coordinator(self, store: ArtifactStore, registry: Registry) -> RetrainCoordinator:
        trainer = self._trainer
        if trainer is None:
            trainer = ChildProcessTrainer(make_trainer(self.settings, self.dsn), self.settings.log_format)
        return RetrainCoordinator(
            RetrainRoute(self.dsn, trainer, functools.partial(tidy, store, registry)),
            self.versions,
            on_change=lambda: self.metrics.retraining.set(1 if self.coordinator and self.coordinator.running else 0),
            on_stage_done=lambda stage, seconds: self.metrics.stage_seconds.labels(stage).observe(seconds),
            on_finished=lambda result: self.metrics.retrains.labels(result.outcome.value).inc(),
        )

    @property
    def canary_policy(self) -> CanaryPolicy:
        settings = self.settings
        return CanaryPolicy(
            share=settings.canary_share,
            automatic=settings.canary == "auto",
            test=SequentialTest(max_impressions=settings.canary_max_impressions),
            check_seconds=settings.canary_check_seconds,
        )

    def _start_online(self, db: Database, trains: bool) -> None:
        """The online record: impressions written in the background (pruned by the processes that train), and
        there the canary's judge."""
        self._online = store = OnlineStore(db, self.settings.attribution_window)
        self._view = OnlineView(store)
        if self.settings.impressions:
            counted = self.metrics.impressions
            self._impressions = ImpressionLog(
                store,
                retention=self.settings.impressions_retention if trains else None,
                on_written=counted.labels("written").inc,
                on_dropped=counted.labels("dropped").inc,
            )
            self._impressions.start()
        if trains:
            self._judge = CanaryJudge(self.versions, store, self.canary_policy, self.metrics.online_sums)
            self._judge.start()

    async def _serve_grpc(self) -> None:
        assert self._db is not None and self._cluster is not None and self._fresh is not None
        assert self._view is not None
        credentials = Credentials.from_settings(self.settings)
        # No SO_REUSEPORT: a second server on the same port must fail, not silently share it. Messages up to twice
        # the gateway's body limit (a JSON body transcodes to a smaller message) and metadata beyond its header
        # limit: whatever passes the gateway passes here.
        metadata = 4 * MAX_HEADER_KB * 1024
        server = grpc.aio.server(
            interceptors=[ObservingInterceptor(self.metrics), AuthInterceptor(credentials, self._needs_credentials)],
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", 2 * MAX_BODY_BYTES),
                ("grpc.max_metadata_size", metadata),
                ("grpc.absolute_max_metadata_size", metadata),
            ],
        )
        scheduler = self._scheduler
        servicer = RecommenderServicer(
            self.versions,
            self._db,
            self._cluster,
            self._fresh,
            self._view,
            AnswersRecord(self._view.store, self._impressions),
            self.settings.start_alpha,
            self.coordinator,
            next_scheduled_retrain=lambda: scheduler.next_tick if scheduler else None,
            batching=BatchPolicy(self.settings.batch_wait_ms / 1000, self.settings.batch_max),
            on_batch=lambda method, size: self.metrics.batch_size.labels(method).observe(size),
            canaries=self.canary_policy,
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
        log.info("gRPC server listening on %s:%d (%s)", self.settings.grpc_host, self.port, self.role.value)

    def _needs_credentials(self, method: str) -> bool:
        """Calls that change state always; the Recommender's reads when RECOMMENDER_AUTH_READS is set. Health
        checks and reflection stay open for probes and tools."""
        name = method.rsplit("/", 1)[-1]
        if not method.startswith(f"/{SERVICE_NAME}/") or name == "Health":
            return False
        return name in STATE_CHANGING or self.settings.auth_reads

    def _served(self, model: HybridModel) -> None:
        """After every swap: metrics, the marker that keeps the version from being pruned, gRPC health."""
        self.metrics.serving(model)
        if self._store is not None:
            self._store.mark_serving(model.meta.version)
        self._health_update = asyncio.ensure_future(self._publish_health())

    def _start_scheduler(self, schedule: Schedule, registry: Registry, db: Database) -> None:
        coordinator, cluster = self.coordinator, self._cluster
        assert coordinator is not None and cluster is not None

        async def new_interactions() -> int:
            active = await registry.active()
            return await CatalogueStore(db).interactions_changed_since(active.created_at if active else None)

        def busy() -> str | None:
            canary = self.versions.canary
            if cluster.retraining:
                return "a retrain is running"
            if canary is not None and self.settings.canary == "auto":  # a new candidate would replace it untested
                return f"the canary {canary.version} is still being judged"
            return None

        self._scheduler = Scheduler(
            schedule,
            coordinator.start,
            busy,
            new_interactions,
            self.settings.retrain_min_new_interactions,
        )
        self._scheduler_task = asyncio.create_task(self._scheduler.run())
        log.info("retraining on the schedule %r", schedule.text)

    async def _publish_health(self) -> None:
        """gRPC health: the Recommender serves once it has a model (readiness: Envoy's checks, Kubernetes'
        readiness probe); the server as a whole ("") serves while it runs (liveness: a process waiting for its
        first model must not be restarted)."""
        serving = self._versions is not None and self._versions.model is not None
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self._health.set(SERVICE_NAME, status)
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 1.0) -> None:
        """A running retrain is killed; in-flight calls get `grace` seconds; every background task ends."""
        if self._scheduler_task is not None:
            self._scheduler_task.cancel()
        if self.coordinator is not None:
            await self.coordinator.stop()
        if self._judge is not None:
            await self._judge.stop()
        if self._server is not None:
            await self._health.enter_graceful_shutdown()
            await self._server.stop(grace)
        if self._impressions is not None:
            await self._impressions.stop()  # what the last answers recorded
        if self._view is not None:
            await self._view.close()
        if self._endpoint is not None:
            self._endpoint.stop()
        if self._cluster is not None:
            await self._cluster.stop()
        if self._fresh is not None:
            await self._fresh.stop()
        if self._store is not None:
            self._store.unmark_serving()
        if self._db is not None:
            await self._db.close()
