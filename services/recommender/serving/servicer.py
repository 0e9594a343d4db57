"""The Recommender service on the wire: request validation, status codes, and messages built from the model."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from recommender.model.hybrid import HybridModel
from recommender.serving.manager import Busy, ModelManager
from recommender.serving.versions import VersionNotFound, Versions, VersionUnavailable
from recommender.storage.registry import VersionRecord
from recommender.training.trainer import RetrainResult
from recommender.v1 import recommender_pb2 as pb
from recommender.v1 import recommender_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
RETRAIN_ACCEPTED = "Model retraining started in background. Check /health for status."
RETRAIN_RUNNING = "Retraining already in progress"
MODEL_NOT_LOADED = "Model not loaded"

# (book_id, rating or None) of what a user did, read from the database for users the model has not seen.
HistoryLookup = Callable[[int], Awaitable[list[tuple[int, float | None]]]]


class RecommenderServicer(pb_grpc.RecommenderServicer):
    def __init__(
        self,
        manager: ModelManager,
        versions: Versions,
        history: HistoryLookup,
        alpha: float,
        next_scheduled_retrain: Callable[[], datetime | None] = lambda: None,
    ) -> None:
        self._manager = manager
        self._versions = versions
        self._history = history
        self._alpha = alpha  # the configured blend weight, shown until a model is loaded
        self._next_scheduled_retrain = next_scheduled_retrain

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext[pb.RecommendRequest, pb.RecommendResponse]
    ) -> pb.RecommendResponse:
        limit = request.limit if request.HasField("limit") else DEFAULT_LIMIT
        if request.user_id == 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id is required: a positive integer")
        if request.user_id < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"user_id must be a positive integer, got {request.user_id}"
            )
        if not 1 <= limit <= MAX_LIMIT:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"limit must be between 1 and {MAX_LIMIT}, got {limit}"
            )
        model = await self._loaded_model(context)
        fresh: list[tuple[int, float | None]] = []
        if model.cf.user_row(request.user_id) is None:
            fresh = await self._fresh_history(request.user_id)
        result = model.recommend(request.user_id, limit, fresh)
        return pb.RecommendResponse(
            user_id=request.user_id,
            strategy=result.strategy.value,
            model_version=model.meta.version,
            recommendations=[
                pb.RecommendedBook(
                    book_id=book.book_id,
                    title=book.title,
                    authors=book.authors,
                    score=_rounded(book.score),
                    cf_score=_rounded(book.cf_score),
                    content_score=_rounded(book.content_score),
                )
                for book in result.books
            ],
        )

    async def ModelInfo(
        self, request: pb.ModelInfoRequest, context: grpc.aio.ServicerContext[pb.ModelInfoRequest, pb.ModelInfoResponse]
    ) -> pb.ModelInfoResponse:
        model, state = self._manager.model, self._manager.state
        progress = state.progress
        fields: dict[str, Any] = {
            "status": "not_loaded",
            "alpha": self._alpha,
            "cf_model": pb.CfModelInfo(),
            "content_model": pb.ContentModelInfo(),
            "is_retraining": state.running,
            "last_retrain_error": state.last_error,
            "last_retrain": _last_retrain(state.last),
            "next_scheduled_retrain": _timestamp(self._next_scheduled_retrain()),
        }
        if progress is not None:
            fields["retrain_progress"] = pb.RetrainProgress(
                stage=progress.stage, percent=round(progress.percent, 1), started_at=_timestamp(progress.started_at)
            )
        if model is not None:
            fields |= {
                "status": "loaded",
                "alpha": model.alpha,
                "cf_model": pb.CfModelInfo(
                    num_users=model.cf.num_users, num_items=model.cf.num_items, matrix_nnz=model.cf.nnz
                ),
                "content_model": pb.ContentModelInfo(
                    num_books=model.content.num_books, feature_dim=model.content.feature_dim
                ),
                "version": model.meta.version,
                "trained_at": _timestamp(model.meta.trained_at),
                "training_seconds": round(model.meta.training_seconds, 3),
                "metrics": _metrics(model.meta.metrics),
                "params": _struct(model.meta.params),
            }
        return pb.ModelInfoResponse(**fields)

    async def Retrain(
        self, request: pb.RetrainRequest, context: grpc.aio.ServicerContext[pb.RetrainRequest, pb.RetrainResponse]
    ) -> pb.RetrainResponse:
        if self._manager.start_retrain(force=request.force) is None:
            await context.abort(grpc.StatusCode.ABORTED, RETRAIN_RUNNING)
        log.info("retrain started on request%s", " (forced: the promotion gate is skipped)" if request.force else "")
        return pb.RetrainResponse(status="accepted", message=RETRAIN_ACCEPTED)

    async def Rollback(
        self, request: pb.RollbackRequest, context: grpc.aio.ServicerContext[pb.RollbackRequest, pb.RollbackResponse]
    ) -> pb.RollbackResponse:
        try:
            version = await self._versions.rollback(self._manager, request.version.strip())
        except Busy:
            await context.abort(grpc.StatusCode.ABORTED, RETRAIN_RUNNING)
        except VersionNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except VersionUnavailable as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return pb.RollbackResponse(status="rolled_back", version=version)

    async def ListModels(
        self,
        request: pb.ListModelsRequest,
        context: grpc.aio.ServicerContext[pb.ListModelsRequest, pb.ListModelsResponse],
    ) -> pb.ListModelsResponse:
        try:
            records = await self._versions.registry.versions()
        except Exception:
            log.warning("could not read the model registry", exc_info=True)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the model registry cannot be read: the database is down")
        return pb.ListModelsResponse(models=[_model_version(record) for record in records])

    async def Health(
        self, request: pb.HealthRequest, context: grpc.aio.ServicerContext[pb.HealthRequest, pb.HealthResponse]
    ) -> pb.HealthResponse:
        return pb.HealthResponse(
            status="retraining" if self._manager.state.running else "ok",
            models_loaded=self._manager.model is not None,
        )

    async def _loaded_model(self, context: grpc.aio.ServicerContext[Any, Any]) -> HybridModel:
        model = self._manager.model
        if model is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, MODEL_NOT_LOADED)
        assert model is not None
        return model

    async def _fresh_history(self, user_id: int) -> list[tuple[int, float | None]]:
        """A new user's history; without the database they still get popular books, not an error."""
        try:
            return await self._history(user_id)
        except Exception:
            log.warning("could not read the history of user %d; answering without it", user_id, exc_info=True)
            return []


def _metrics(values: dict[str, float]) -> pb.Metrics:
    return pb.Metrics(**{name: round(values.get(name, 0.0), 6) for name in pb.Metrics.DESCRIPTOR.fields_by_name})


def _last_retrain(result: RetrainResult | None) -> pb.LastRetrain | None:
    if result is None:
        return None
    return pb.LastRetrain(
        outcome=result.outcome.value,
        version=result.version,
        metrics_before=_metrics(result.metrics_before) if result.metrics_before else None,
        metrics_after=_metrics(result.metrics_after) if result.metrics_after else None,
        reason=result.reason,
        seconds=round(result.seconds, 3),
    )


def _timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _struct(values: dict[str, Any]) -> Struct:
    struct = Struct()
    struct.update(values)
    return struct


def _model_version(record: VersionRecord) -> pb.ModelVersion:
    sizes = record.data_sizes
    return pb.ModelVersion(
        version=record.version,
        status=record.status.value,
        created_at=_timestamp(record.created_at),
        metrics=_metrics(record.metrics),
        params=_struct(record.params),
        reason=record.reason,
        data_sizes=pb.DataSizes(
            users=sizes.get("users", 0), books=sizes.get("books", 0), interactions=sizes.get("interactions", 0)
        ),
        training_seconds=round(record.training_seconds, 3),
    )


def _rounded(score: float) -> float:
    """Scores are float32 maths: six decimals is all they hold, and keeps JSON free of float noise."""
    return round(score, 6)
