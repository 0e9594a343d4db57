"""Process wiring for the gRPC side: database, model handle, servicer, health and reflection on one grpc.aio server."""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import _async as health_aio  # what `health.aio` re-exports
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from recommender import demo
from recommender.serving.manager import ModelBuilder, ModelManager
from recommender.serving.servicer import RecommenderServicer
from recommender.serving.versions import Versions
from recommender.settings import Settings
from recommender.storage.artifacts import ArtifactStore
from recommender.storage.db import Database
from recommender.storage.registry import Registry
from recommender.training.trainer import Trainer, quality_policy, training_params
from recommender.v1 import SERVICE_NAME, recommender_pb2_grpc

log = logging.getLogger(__name__)


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
    )


class GrpcService:
    """`await start()`, then serve on `port` until `await stop()`."""

    def __init__(self, settings: Settings, dsn: str, build: ModelBuilder | None = None) -> None:
        self.settings = settings
        self.dsn = dsn
        self.port = 0
        self._build: ModelBuilder = build or make_trainer(settings, dsn)
        self._db: Database | None = None
        self._server: grpc.aio.Server | None = None
        self._manager: ModelManager | None = None
        self._store = ArtifactStore(settings.artifacts_dir)
        self._health = health_aio.HealthServicer()

    @property
    def manager(self) -> ModelManager:
        assert self._manager is not None, "start() first"
        return self._manager

    async def start(self) -> None:
        store = self._store
        log.info("model artifacts in %s", store.root.resolve())
        self._db = await Database.connect(self.dsn)
        await prepare_database(self._db, self.settings)
        versions = Versions(Registry(self._db), store)
        try:
            model = await versions.load_active()
        except OSError as exc:
            raise OSError(f"cannot read the model artifacts in {store.root}: {exc}") from exc
        loop = asyncio.get_running_loop()

        def on_change() -> None:  # called from the retrain thread too
            self._mark_serving()
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._publish_health()))

        self._manager = ModelManager(model, self._build, on_change)
        self._mark_serving()
        await self._publish_health()
        # No SO_REUSEPORT: a second server on the same port must fail, not silently share it.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        recommender_pb2_grpc.add_RecommenderServicer_to_server(
            RecommenderServicer(self._manager, versions, self._db.user_history, self.settings.start_alpha), server
        )
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
        if model is None:
            log.info("no model artifact yet: training the first model; Recommend is UNAVAILABLE until it is ready")
            self._manager.start_retrain()
        else:
            log.info("serving model version %s", model.meta.version)

    def _mark_serving(self) -> None:
        model = self._manager.model if self._manager is not None else None
        if model is not None:
            self._store.mark_serving(model.meta.version)

    async def _publish_health(self) -> None:
        serving = self._manager is not None and self._manager.model is not None
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self._health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        """In-flight calls get `grace` seconds; a running retrain stops at its next checkpoint."""
        if self._server is not None:
            await self._health.enter_graceful_shutdown()
            await self._server.stop(grace)
        if self._manager is not None:
            await asyncio.to_thread(self._manager.shutdown)
            self._store.unmark_serving()
        if self._db is not None:
            await self._db.close()
