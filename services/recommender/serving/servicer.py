"""The Recommender service on the wire: request validation, status codes, and messages built from the model."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from recommender.model import validation
from recommender.model.dataset import Book, Interaction
from recommender.model.hybrid import HybridModel, Recommendations, Request, ScoredBook, UserHistory
from recommender.model.online import Interval, OnlineSums, online_intervals
from recommender.model.validation import (
    DEFAULT_LIMIT,
    MAX_BATCH,
    MAX_BUCKET_MINUTES,
    MAX_HISTORY_HOURS,
    MAX_LIMIT,
    MAX_REASON,
)
from recommender.serving.batching import DEFAULT_BATCHING, Batcher, BatchPolicy
from recommender.serving.canary import CanaryPolicy, compare
from recommender.serving.cluster import Cluster
from recommender.serving.freshness import FreshData
from recommender.serving.impressions import ImpressionLog
from recommender.serving.online import OnlineView
from recommender.serving.retrain import RetrainCoordinator, RetrainState
from recommender.serving.versions import NoCanary, VersionManager, VersionNotFound, VersionUnavailable, is_available
from recommender.storage.db import DATABASE_ERRORS, CommitUncertain, Database, UnknownBooks, UntitledBooks
from recommender.storage.events import Event, Kind
from recommender.storage.online import Feedback, Impression, OnlineStore, attribution_problem
from recommender.storage.registry import ActiveChanged, Outcome, VersionRecord
from recommender.v1 import recommender_pb2 as pb
from recommender.v1 import recommender_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

RETRAIN_ACCEPTED = "Model retraining started in background. Check /health for status."
RETRAIN_RUNNING = "Retraining already in progress"
MODEL_NOT_LOADED = "Model not loaded"
WORKER_RETRAIN = "this process only serves: send retrains and rollbacks to the main process or a replica"
SHOWN_PROBLEMS = 20  # bad entries named in one error message

T = TypeVar("T")
HISTORY_BUCKET_MINUTES, HISTORY_HOURS = 60, 48  # the online history's defaults


class RecommenderServicer(pb_grpc.RecommenderServicer):
    def __init__(
        self,
        versions: VersionManager,
        db: Database,
        cluster: Cluster,
        fresh: FreshData,
        online: OnlineView,
        alpha: float,
        coordinator: RetrainCoordinator | None = None,
        next_scheduled_retrain: Callable[[], datetime | None] = lambda: None,
        batching: BatchPolicy = DEFAULT_BATCHING,
        on_batch: Callable[[str, int], None] = lambda method, size: None,
        impressions: ImpressionLog | None = None,
        canaries: CanaryPolicy | None = None,
    ) -> None:
        """`coordinator`: None in a serving worker, which neither retrains nor rolls back. Concurrent Recommend
        (and SimilarBooks) calls are answered in batches (see serving/batching.py); `on_batch(method, size)` after
        each. `online`: the online record (feedback in, metrics out); `impressions`: where Recommend answers are
        recorded (None: they are not); `canaries`: how canaries are started and judged."""
        self._versions = versions
        self._db = db
        self._cluster = cluster
        self._fresh = fresh
        self._alpha = alpha  # the configured blend weight, shown until a model is loaded
        self._coordinator = coordinator
        self._next_scheduled_retrain = next_scheduled_retrain
        self._latest: VersionRecord | None = None  # the registry's newest version, as last read
        self._online = online
        self._impressions = impressions
        self._canaries = canaries or CanaryPolicy()
        self._recommendations: Batcher[tuple[HybridModel, Request], Recommendations] = Batcher(
            per_model(HybridModel.recommend_many), batching, lambda size: on_batch("Recommend", size)
        )
        self._similar: Batcher[tuple[HybridModel, tuple[int, int]], list[ScoredBook] | None] = Batcher(
            per_model(HybridModel.similar_many), batching, lambda size: on_batch("SimilarBooks", size)
        )

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext[pb.RecommendRequest, pb.RecommendResponse]
    ) -> pb.RecommendResponse:
        if request.user_id == 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id is required: a positive integer")
        await _positive("user_id", request.user_id, context)
        limit = await _limit(request, context)
        model = await self._loaded_model(context, request.user_id)
        history = await self._current_history(model, request.user_id)
        result = await self._recommendations((model, Request(request.user_id, limit, history)))
        recommendation_id = uuid.uuid4()
        if self._impressions is not None and result.books:
            books = [book.book_id for book in result.books]
            self._impressions.record(
                Impression(recommendation_id, request.user_id, model.meta.version, books, datetime.now(UTC))
            )
        return recommend_response(request.user_id, model.meta.version, result, str(recommendation_id))

    async def ModelInfo(
        self, request: pb.ModelInfoRequest, context: grpc.aio.ServicerContext[pb.ModelInfoRequest, pb.ModelInfoResponse]
    ) -> pb.ModelInfoResponse:
        state = self._coordinator.state if self._coordinator else None
        latest = await self._latest_version()
        info = pb.ModelInfoResponse(
            status="not_loaded",
            alpha=self._alpha,
            cf_model=pb.CfModelInfo(),
            content_model=pb.ContentModelInfo(),
            is_retraining=self._cluster.retraining,
            last_retrain_error=_last_error(state, latest),
            last_retrain=_last_retrain(latest),
            next_scheduled_retrain=_timestamp(self._next_scheduled_retrain()),
        )
        if state is not None and state.progress is not None:
            progress = state.progress
            info.retrain_progress.CopyFrom(
                pb.RetrainProgress(
                    stage=progress.stage, percent=round(progress.percent, 1), started_at=_timestamp(progress.started_at)
                )
            )
        model = self._versions.model
        if model is not None:
            model = self._fresh.serving(model)
            info.status = "loaded"
            info.alpha = model.alpha
            info.cf_model.CopyFrom(
                pb.CfModelInfo(num_users=model.cf.num_users, num_items=model.cf.num_items, matrix_nnz=model.cf.nnz)
            )
            info.content_model.CopyFrom(
                pb.ContentModelInfo(num_books=model.content.num_books, feature_dim=model.content.feature_dim)
            )
            info.version = model.meta.version
            info.trained_at.FromDatetime(model.meta.trained_at)
            info.training_seconds = round(model.meta.training_seconds, 3)
            info.metrics.CopyFrom(_metrics(model.meta.metrics))
            info.params.CopyFrom(_struct(model.meta.params.as_dict()))
            await self._add_online(info, model.meta.version)
        return info

    async def _add_online(self, info: pb.ModelInfoResponse, version: str) -> None:
        """The active version's online metrics, and the canary's comparison; left out while the database is away."""
        try:
            sums = await self._online.sums()
            comparison = await compare(self._online.sums, self._versions, self._canaries.test)
        except DATABASE_ERRORS as exc:
            log.warning("could not read the online metrics: %s", exc)
            return
        if version in sums:
            info.online.CopyFrom(online_metrics(sums[version]))
        canary = self._versions.canary
        if canary is not None and comparison is not None:
            info.canary.CopyFrom(
                pb.Canary(
                    version=canary.version,
                    share=canary.share,
                    started_at=_timestamp(canary.started_at),
                    online=online_metrics(comparison.canary),
                    active_online=online_metrics(comparison.active),
                    automatic=self._canaries.automatic,
                    test=comparison.verdict.reason,
                )
            )

    async def Retrain(
        self, request: pb.RetrainRequest, context: grpc.aio.ServicerContext[pb.RetrainRequest, pb.RetrainResponse]
    ) -> pb.RetrainResponse:
        coordinator = await self._coordinating(context)
        try:
            started = await coordinator.start(force=request.force)
        except DATABASE_ERRORS as exc:  # the retrain lock cannot even be asked for
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"no retrain started: {self._db.unreachable(exc)}")
        if not started:
            await context.abort(grpc.StatusCode.ABORTED, RETRAIN_RUNNING)
        log.info("retrain started on request%s", " (forced: the promotion gate is skipped)" if request.force else "")
        return pb.RetrainResponse(status="accepted", message=RETRAIN_ACCEPTED)

    async def Rollback(
        self, request: pb.RollbackRequest, context: grpc.aio.ServicerContext[pb.RollbackRequest, pb.RollbackResponse]
    ) -> pb.RollbackResponse:
        await self._coordinating(context)
        await _abort_if_invalid(validation.version_problems("version", request.version.strip()), context)
        if self._cluster.retraining:
            await context.abort(grpc.StatusCode.ABORTED, RETRAIN_RUNNING)
        try:
            version = await self._versions.rollback(request.version.strip())
        except VersionNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except VersionUnavailable as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except ActiveChanged as exc:
            await context.abort(grpc.StatusCode.ABORTED, str(exc))
        except DATABASE_ERRORS as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"nothing rolled back: {self._db.unreachable(exc)}")
        return pb.RollbackResponse(status="rolled_back", version=version)

    async def ListModels(
        self,
        request: pb.ListModelsRequest,
        context: grpc.aio.ServicerContext[pb.ListModelsRequest, pb.ListModelsResponse],
    ) -> pb.ListModelsResponse:
        try:
            records = await self._versions.registry.versions()
            available = await self._versions.available()
            online = await self._online.sums()
        except DATABASE_ERRORS as exc:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"the model registry cannot be read: {self._db.unreachable(exc)}"
            )
        return pb.ListModelsResponse(models=[_model_version(record, available, online) for record in records])

    async def StartCanary(
        self,
        request: pb.StartCanaryRequest,
        context: grpc.aio.ServicerContext[pb.StartCanaryRequest, pb.StartCanaryResponse],
    ) -> pb.StartCanaryResponse:
        await self._coordinating(context)
        version = request.version.strip()
        share = request.share if request.HasField("share") else self._canaries.share
        problems = validation.version_problems("version", version) + validation.share_problems("share", share)
        if not version:
            problems.insert(0, "version is required: GET /api/v1/models lists them")
        await _abort_if_invalid(problems, context)
        if self._cluster.retraining:
            await context.abort(grpc.StatusCode.ABORTED, RETRAIN_RUNNING)
        try:
            await self._versions.start_canary(version, share)
        except VersionNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except VersionUnavailable as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except DATABASE_ERRORS as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"no canary started: {self._db.unreachable(exc)}")
        return pb.StartCanaryResponse(status="canary", version=version, share=share)

    async def PromoteCanary(
        self,
        request: pb.PromoteCanaryRequest,
        context: grpc.aio.ServicerContext[pb.PromoteCanaryRequest, pb.PromoteCanaryResponse],
    ) -> pb.PromoteCanaryResponse:
        await self._coordinating(context)
        if self._cluster.retraining:
            await context.abort(grpc.StatusCode.ABORTED, RETRAIN_RUNNING)
        try:
            version = await self._versions.promote_canary("promoted by hand")
        except (NoCanary, ActiveChanged) as exc:
            await context.abort(grpc.StatusCode.ABORTED, str(exc))
        except VersionUnavailable as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except DATABASE_ERRORS as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"nothing promoted: {self._db.unreachable(exc)}")
        log.info("canary %s promoted by hand", version)
        return pb.PromoteCanaryResponse(status="promoted", version=version)

    async def AbortCanary(
        self,
        request: pb.AbortCanaryRequest,
        context: grpc.aio.ServicerContext[pb.AbortCanaryRequest, pb.AbortCanaryResponse],
    ) -> pb.AbortCanaryResponse:
        await self._coordinating(context)
        await _abort_if_invalid(validation.text_problems("reason", request.reason, MAX_REASON), context)
        reason = f"aborted by hand: {request.reason.strip()}" if request.reason.strip() else "aborted by hand"
        try:
            version = await self._versions.abort_canary(reason)
        except NoCanary as exc:
            await context.abort(grpc.StatusCode.ABORTED, str(exc))
        except DATABASE_ERRORS as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"nothing aborted: {self._db.unreachable(exc)}")
        log.info("canary %s %s", version, reason)
        return pb.AbortCanaryResponse(status="aborted", version=version)

    async def OnlineHistory(
        self,
        request: pb.OnlineHistoryRequest,
        context: grpc.aio.ServicerContext[pb.OnlineHistoryRequest, pb.OnlineHistoryResponse],
    ) -> pb.OnlineHistoryResponse:
        minutes = request.bucket_minutes if request.HasField("bucket_minutes") else HISTORY_BUCKET_MINUTES
        hours = request.hours if request.HasField("hours") else HISTORY_HOURS
        problems = []
        if not 1 <= minutes <= MAX_BUCKET_MINUTES:
            problems.append(f"bucket_minutes must be between 1 and {MAX_BUCKET_MINUTES}, got {minutes}")
        if not 1 <= hours <= MAX_HISTORY_HOURS:
            problems.append(f"hours must be between 1 and {MAX_HISTORY_HOURS}, got {hours}")
        await _abort_if_invalid(problems, context)
        try:
            series = await self._online.store.history(
                datetime.now(UTC) - timedelta(hours=hours), timedelta(minutes=minutes)
            )
        except DATABASE_ERRORS as exc:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"the online metrics cannot be read: {self._db.unreachable(exc)}"
            )
        return pb.OnlineHistoryResponse(
            versions=[
                pb.VersionSeries(
                    version=version,
                    points=[
                        pb.OnlinePoint(
                            start=_timestamp(start),
                            impressions=sums.impressions,
                            **{name: _rounded(i.value) for name, i in online_intervals(sums).items()},
                        )
                        for start, sums in points
                    ],
                )
                for version, points in series.items()
            ]
        )

    async def RecordFeedback(
        self,
        request: pb.RecordFeedbackRequest,
        context: grpc.aio.ServicerContext[pb.RecordFeedbackRequest, pb.RecordFeedbackResponse],
    ) -> pb.RecordFeedbackResponse:
        entries = request.events
        await _check_batch("events", len(entries), context)
        now = time.time()
        problems = [problem for i, entry in enumerate(entries) for problem in _feedback_problems(i, entry)]
        await _abort_if(problems, context)
        feedback = [
            Feedback(
                uuid.UUID(e.recommendation_id),
                e.book_id,
                e.event,
                _moment(validation.event_time(_seconds(e), now)),
            )
            for e in entries
        ]
        names = [f"events[{i}]" for i in range(len(entries))]
        await _abort_if(await self._unattributable(feedback, names, context), context)
        await self._written(self._online.store.add_feedback(feedback), "nothing recorded", context)
        return pb.RecordFeedbackResponse(recorded=len(feedback))

    async def Health(
        self, request: pb.HealthRequest, context: grpc.aio.ServicerContext[pb.HealthRequest, pb.HealthResponse]
    ) -> pb.HealthResponse:
        return pb.HealthResponse(
            status="retraining" if self._cluster.retraining else "ok",
            models_loaded=self._versions.model is not None,
        )

    async def _loaded_model(self, context: grpc.aio.ServicerContext[Any, Any], user_id: int = 0) -> HybridModel:
        """The model that answers `user_id` (the canary for its share), with the books added since its snapshot;
        UNAVAILABLE before the first one."""
        model = self._versions.model_for(user_id) if user_id else self._versions.model
        if model is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, MODEL_NOT_LOADED)
        assert model is not None
        return self._fresh.serving(model)

    async def _coordinating(self, context: grpc.aio.ServicerContext[Any, Any]) -> RetrainCoordinator:
        """This process's retrain coordinator; FAILED_PRECONDITION in a serving worker, which has none."""
        if self._coordinator is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, WORKER_RETRAIN)
        assert self._coordinator is not None
        return self._coordinator

    async def _latest_version(self) -> VersionRecord | None:
        """The registry's newest version (what the last retrain anywhere did); the last one read while the
        database is away."""
        try:
            self._latest = await self._versions.registry.latest()
        except DATABASE_ERRORS:
            log.warning("could not read the registry; answering with what was read before")
        return self._latest

    async def RecordInteractions(
        self,
        request: pb.RecordInteractionsRequest,
        context: grpc.aio.ServicerContext[pb.RecordInteractionsRequest, pb.RecordInteractionsResponse],
    ) -> pb.RecordInteractionsResponse:
        entries = request.interactions
        await _check_batch("interactions", len(entries), context)
        now = time.time()
        problems = [problem for i, entry in enumerate(entries) for problem in _interaction_problems(i, entry)]
        await _abort_if(problems, context)
        interactions = [
            Interaction(
                user_id=e.user_id,
                book_id=e.book_id,
                rating=e.rating if e.HasField("rating") else None,
                timestamp=validation.event_time(_seconds(e), now),
            )
            for e in entries
        ]
        # A read that names the answer that showed the book counts for that answer (storage/online.py).
        named = [(f"interactions[{i}]", e) for i, e in enumerate(entries) if e.HasField("recommendation_id")]
        reads = [
            Feedback(uuid.UUID(e.recommendation_id), e.book_id, "read", _moment(interactions[i].timestamp), e.user_id)
            for i, e in enumerate(entries)
            if e.HasField("recommendation_id")
        ]
        await _abort_if(await self._unattributable(reads, [name for name, _ in named], context), context)
        also = OnlineStore.feedback_writer(reads) if reads else None
        try:
            await self._written(self._db.record_interactions(interactions, also), "nothing recorded", context)
        except UnknownBooks as exc:
            missing = set(exc.book_ids)
            await _abort_if(
                [
                    f"interactions[{i}]: book {e.book_id} is not in the catalogue"
                    for i, e in enumerate(entries)
                    if e.book_id in missing
                ],
                context,
                grpc.StatusCode.NOT_FOUND,
            )
        # This replica answers with them at once; the others when the change notice reaches them.
        self._fresh.on_event(Event.about(Kind.INTERACTIONS, (i.user_id for i in interactions)))
        return pb.RecordInteractionsResponse(recorded=len(interactions))

    async def UpsertBooks(
        self,
        request: pb.UpsertBooksRequest,
        context: grpc.aio.ServicerContext[pb.UpsertBooksRequest, pb.UpsertBooksResponse],
    ) -> pb.UpsertBooksResponse:
        entries = request.books
        await _check_batch("books", len(entries), context)
        await _abort_if([problem for i, entry in enumerate(entries) for problem in _book_problems(i, entry)], context)
        try:
            counts = await self._written(
                self._db.upsert_books([_book_change(entry) for entry in _merged(entries)]), "nothing written", context
            )
        except UntitledBooks as exc:
            untitled = set(exc.book_ids)
            await _abort_if(
                [
                    f"books[{i}]: book {e.book_id} is not in the catalogue: a new book needs a title"
                    for i, e in enumerate(entries)
                    if e.book_id in untitled
                ],
                context,
                grpc.StatusCode.NOT_FOUND,
            )
        await self._fresh.books_changed()
        return pb.UpsertBooksResponse(added=counts.added, updated=counts.updated)

    async def SimilarBooks(
        self,
        request: pb.SimilarBooksRequest,
        context: grpc.aio.ServicerContext[pb.SimilarBooksRequest, pb.SimilarBooksResponse],
    ) -> pb.SimilarBooksResponse:
        await _positive("book_id", request.book_id, context)
        limit = await _limit(request, context)
        model = await self._loaded_model(context)
        books = await self._similar((model, (request.book_id, limit)))
        if books is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"book {request.book_id} is not in the catalogue")
        assert books is not None
        return pb.SimilarBooksResponse(
            book_id=request.book_id,
            model_version=model.meta.version,
            books=[
                pb.SimilarBook(book_id=b.book_id, title=b.title, authors=b.authors, score=_rounded(b.score))
                for b in books
            ],
        )

    async def UserInteractions(
        self,
        request: pb.UserInteractionsRequest,
        context: grpc.aio.ServicerContext[pb.UserInteractionsRequest, pb.UserInteractionsResponse],
    ) -> pb.UserInteractionsResponse:
        await _positive("user_id", request.user_id, context)
        limit = await _limit(request, context)
        try:
            rows = await self._db.recent_interactions(request.user_id, limit)
        except DATABASE_ERRORS as exc:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"the interactions cannot be read: {self._db.unreachable(exc)}"
            )
        return pb.UserInteractionsResponse(
            user_id=request.user_id,
            interactions=[
                pb.UserInteraction(
                    book_id=row["book_id"],
                    title=row["title"],
                    authors=row["authors"],
                    rating=row["rating"],
                    occurred_at=_timestamp(row["occurred_at"]),
                )
                for row in rows
            ],
        )

    async def _written(self, write: Awaitable[T], nothing: str, context: grpc.aio.ServicerContext[Any, Any]) -> T:
        """What `write` returns; UNAVAILABLE when the database cannot take it (`nothing`: what the message says was
        not written) or its commit was cut off (it may have landed). Its other errors go to the caller."""
        try:
            return await write
        except CommitUncertain as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except DATABASE_ERRORS as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{nothing}: {self._db.unreachable(exc)}")
        raise AssertionError("unreachable: context.abort raises")

    async def _unattributable(
        self, feedback: Sequence[Feedback], names: Sequence[str], context: grpc.aio.ServicerContext[Any, Any]
    ) -> list[str]:
        """Why each event cannot count for the answer it names, "name: why", for the answers known here (written,
        or shown by this process and queued). An answer not known yet (another replica's, still queued) is
        judged by the same rules when the online figures are summed."""
        if not feedback:
            return []
        ids = [f.recommendation_id for f in feedback]
        try:
            shown = await self._online.store.shown(ids)
        except DATABASE_ERRORS as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"nothing recorded: {self._db.unreachable(exc)}")
        if self._impressions is not None:
            shown |= self._impressions.unwritten(ids)
        window = self._online.store.attribution_window
        problems = []
        for name, event in zip(names, feedback, strict=True):
            answer = shown.get(event.recommendation_id)
            problem = attribution_problem(event, answer, window) if answer is not None else ""
            if problem:
                problems.append(f"{name}: {problem}")
        return problems

    async def _current_history(self, model: HybridModel, user_id: int) -> UserHistory | None:
        """The user's history when it is newer than the model; None (the model's record) when the database
        cannot be read, so that answers go on."""
        try:
            return await self._fresh.history(model, user_id)
        except DATABASE_ERRORS as exc:
            log.warning("could not read the history of user %d; answering without it: %s", user_id, exc)
            return None


async def _positive(name: str, value: int, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    if value < 1:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{name} must be a positive integer, got {value}")


async def _limit(
    request: pb.RecommendRequest | pb.SimilarBooksRequest | pb.UserInteractionsRequest,
    context: grpc.aio.ServicerContext[Any, Any],
) -> int:
    limit = request.limit if request.HasField("limit") else DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit


async def _check_batch(name: str, size: int, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    if not 1 <= size <= MAX_BATCH:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{name} must hold 1 to {MAX_BATCH} entries, got {size}")


async def _abort_if_invalid(problems: list[str], context: grpc.aio.ServicerContext[Any, Any]) -> None:
    if problems:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))


async def _abort_if(
    problems: list[str],
    context: grpc.aio.ServicerContext[Any, Any],
    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT,
) -> None:
    """`code` (INVALID_ARGUMENT; NOT_FOUND for entries naming what does not exist) naming the bad entries, when
    there are any: nothing was written."""
    if problems:
        shown = "; ".join(problems[:SHOWN_PROBLEMS])
        more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
        await context.abort(code, f"nothing written: {shown}{more}")


def _interaction_problems(i: int, entry: pb.InteractionInput) -> list[str]:
    name = f"interactions[{i}]"
    return [
        *validation.id_problems(f"{name}.user_id", entry.user_id),
        *validation.id_problems(f"{name}.book_id", entry.book_id),
        *validation.rating_problems(f"{name}.rating", entry.rating if entry.HasField("rating") else None),
        *validation.timestamp_problems(
            f"{name}.timestamp", float(entry.timestamp) if entry.HasField("timestamp") else None
        ),
        *(
            validation.recommendation_id_problems(f"{name}.recommendation_id", entry.recommendation_id)
            if entry.HasField("recommendation_id")
            else []
        ),
    ]


def _feedback_problems(i: int, entry: pb.FeedbackEvent) -> list[str]:
    name = f"events[{i}]"
    return [
        *validation.recommendation_id_problems(f"{name}.recommendation_id", entry.recommendation_id),
        *validation.id_problems(f"{name}.book_id", entry.book_id),
        *validation.event_problems(f"{name}.event", entry.event),
        *validation.timestamp_problems(
            f"{name}.timestamp", float(entry.timestamp) if entry.HasField("timestamp") else None
        ),
    ]


def _seconds(entry: pb.InteractionInput | pb.FeedbackEvent) -> float | None:
    return float(entry.timestamp) if entry.HasField("timestamp") else None


def _moment(timestamp: float | None) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC) if timestamp is not None else datetime.now(UTC)


def _book_problems(i: int, entry: pb.BookInput) -> list[str]:
    name = f"books[{i}]"
    problems = validation.id_problems(f"{name}.book_id", entry.book_id)
    genres: tuple[str, ...] | None = None
    if entry.HasField("genres"):
        if all(v.WhichOneof("kind") == "string_value" for v in entry.genres.values):
            genres = tuple(v.string_value for v in entry.genres.values)
        else:
            problems.append(f"{name}.genres must be an array of strings")
    return problems + validation.book_text_problems(
        f"{name}.",
        title=entry.title if entry.HasField("title") else None,
        authors=entry.authors if entry.HasField("authors") else None,
        description=entry.description if entry.HasField("description") else None,
        genres=genres,
        published_year=entry.published_year if entry.HasField("published_year") else None,
    )


def _merged(entries: Sequence[pb.BookInput]) -> list[pb.BookInput]:
    """One entry per book: a book given twice in one call takes the fields of both, the later's where both give
    one (as two calls in a row would)."""
    merged: dict[int, pb.BookInput] = {}
    for entry in entries:
        book = merged.setdefault(entry.book_id, pb.BookInput())
        if entry.HasField("genres"):
            book.ClearField("genres")  # replaced, not appended to
        book.MergeFrom(entry)
    return list(merged.values())


def _book_change(entry: pb.BookInput) -> tuple[Book, list[str]]:
    """The book as given, and the columns it gives (the others keep their stored values)."""
    columns = ["book_id", *(name for name in ("title", "authors", "description") if entry.HasField(name))]
    if entry.HasField("genres"):
        columns.append("genres")
    if entry.HasField("published_year"):
        columns.append("published_year")
    book = Book(
        book_id=entry.book_id,
        title=entry.title.strip(),
        authors=entry.authors,
        description=entry.description,
        genres=tuple(v.string_value for v in entry.genres.values),
        published_year=entry.published_year if entry.HasField("published_year") else None,
    )
    return book, columns


def _metrics(values: dict[str, float]) -> pb.Metrics:
    return pb.Metrics(**{name: round(values.get(name, 0.0), 6) for name in pb.Metrics.DESCRIPTOR.fields_by_name})


def recommend_response(
    user_id: int, version: str, result: Recommendations, recommendation_id: str = ""
) -> pb.RecommendResponse:
    return pb.RecommendResponse(
        user_id=user_id,
        strategy=result.strategy.value,
        model_version=version,
        recommendation_id=recommendation_id,
        recommendations=[
            pb.RecommendedBook(
                book_id=book.book_id,
                title=book.title,
                authors=book.authors,
                score=_rounded(book.score),
                cf_score=_rounded(book.cf_score),
                content_score=_rounded(book.content_score),
                because=[
                    pb.Reason(book_id=r.book_id, title=r.title, part=r.part, share=_rounded(r.share))
                    for r in book.because
                ],
            )
            for book in result.books
        ],
    )


Asked = TypeVar("Asked")
Answered = TypeVar("Answered")


def per_model(
    answer: Callable[[HybridModel, Sequence[Asked]], list[Answered]],
) -> Callable[[Sequence[tuple[HybridModel, Asked]]], list[Answered]]:
    """A batch answered by the model each request was meant for (a swap can fall between two of them)."""

    def answered(items: Sequence[tuple[HybridModel, Asked]]) -> list[Answered]:
        groups: dict[int, tuple[HybridModel, list[int]]] = {}
        for index, (model, _asked) in enumerate(items):
            groups.setdefault(id(model), (model, []))[1].append(index)
        answers: dict[int, Answered] = {}
        for model, indices in groups.values():
            answers |= zip(indices, answer(model, [items[i][1] for i in indices]), strict=True)
        return [answers[i] for i in range(len(items))]

    return answered


def _last_retrain(record: VersionRecord | None) -> pb.LastRetrain | None:
    if record is None:
        return None
    return pb.LastRetrain(
        outcome=record.outcome.value,
        version=record.version,
        metrics_before=_metrics(record.metrics_before) if record.metrics_before else None,
        metrics_after=_metrics(record.metrics) if record.metrics else None,
        reason=record.reason,
        seconds=round(record.training_seconds, 3),
    )


def _last_error(state: RetrainState | None, latest: VersionRecord | None) -> str:
    """Why the last retrain failed (empty when it did not): the registry's newest version says it for the whole
    cluster, unless this process's own retrain ended later without a record (the database was away, say)."""
    finished = state.finished_at if state is not None else None
    newer = finished is not None and (latest is None or latest.created_at is None or finished > latest.created_at)
    if state is not None and newer:
        return state.last_error
    return latest.reason if latest is not None and latest.outcome is Outcome.FAILED else ""


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


def online_metrics(sums: OnlineSums) -> pb.OnlineMetrics:
    intervals = {name: _interval(interval) for name, interval in online_intervals(sums).items()}
    return pb.OnlineMetrics(
        impressions=sums.impressions,
        clicks=round(sums.clicks.total),
        reads=round(sums.reads.total),
        since=_timestamp(sums.since),
        **intervals,
    )


def _interval(interval: Interval) -> pb.Interval:
    return pb.Interval(value=_rounded(interval.value), low=_rounded(interval.low), high=_rounded(interval.high))


def _model_version(record: VersionRecord, available: set[str], online: dict[str, OnlineSums]) -> pb.ModelVersion:
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
        artifact_available=is_available(record, available),
        outcome=record.outcome.value,
        online=online_metrics(online[record.version]) if record.version in online else None,
        canary_share=record.canary_share or 0.0,
    )


def _rounded(score: float) -> float:
    """Scores are float32 maths: six decimals is all they hold, and keeps JSON free of float noise."""
    return round(score, 6)
