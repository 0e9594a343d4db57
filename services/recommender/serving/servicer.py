"""The Recommender's RPCs: plain handlers. What a request says is read in serving/requests.py, answers are built in
serving/messages.py, and every refusal becomes its status in one place (serving/errors.py)."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import grpc
import numpy as np

from recommender.answers.judge import CanaryPolicy, compare
from recommender.answers.record import AnswersRecord
from recommender.answers.view import OnlineView
from recommender.model.answers import ReaderEvents, Recommendations, Request, ScoredBook
from recommender.model.filters import NO_FILTERS, Filters, genre_key
from recommender.model.hybrid import HybridModel
from recommender.model.recommend import recommend_many
from recommender.model.similar import similar_to_many
from recommender.serving import messages, requests
from recommender.serving.batching import DEFAULT_BATCHING, Batcher, BatchPolicy, per_model
from recommender.serving.cluster import Cluster
from recommender.serving.errors import Refused, answers, invalid, listed_ids, naming, refuse
from recommender.serving.freshness import FreshData
from recommender.serving.versions import VersionManager
from recommender.storage.catalogue import CatalogueStore, UnknownBooks, UntitledBooks
from recommender.storage.db import DATABASE_ERRORS, Database
from recommender.storage.erasure import Erased, Erasure, NothingStored
from recommender.storage.events import Event, Kind
from recommender.storage.registry import VersionRecord
from recommender.training.coordinator import RetrainCoordinator
from recommender.v1 import recommender_pb2 as pb
from recommender.v1 import recommender_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

RETRAIN_ACCEPTED = "Model retraining started in background. Check /health for status."
RETRAIN_RUNNING = "Retraining already in progress"
MODEL_NOT_LOADED = "Model not loaded"
WORKER_RETRAIN = "this process only serves: send retrains and rollbacks to the main process or a replica"

Context = grpc.aio.ServicerContext[Any, Any]


class RecommenderServicer(pb_grpc.RecommenderServicer):
    def __init__(
        self,
        versions: VersionManager,
        db: Database,
        cluster: Cluster,
        fresh: FreshData,
        online: OnlineView,
        answers: AnswersRecord,
        alpha: float,
        coordinator: RetrainCoordinator | None = None,
        next_scheduled_retrain: Callable[[], datetime | None] = lambda: None,
        batching: BatchPolicy = DEFAULT_BATCHING,
        on_batch: Callable[[str, int], None] = lambda method, size: None,
        canaries: CanaryPolicy | None = None,
    ) -> None:
        """`coordinator`: None in a serving worker, which neither retrains nor rolls back. Concurrent Recommend
        (and SimilarBooks) calls are answered in batches (see serving/batching.py); `on_batch(method, size)` after
        each. `online`: the online metrics; `answers`: the record of answers (recorded, paged, credited with feedback);
        `canaries`: how canaries are started and judged."""
        self._versions = versions
        self._db = db
        self._catalogue = CatalogueStore(db)
        self._cluster = cluster
        self._fresh = fresh
        self._alpha = alpha  # the configured blend weight, shown until a model is loaded
        self._coordinator = coordinator
        self._next_scheduled_retrain = next_scheduled_retrain
        self._latest: VersionRecord | None = None  # the registry's newest version, as last read
        self._online = online
        self._answers = answers
        self._messages = messages.AnswerMessages()
        self._canaries = canaries or CanaryPolicy()
        self._recommendations: Batcher[tuple[HybridModel, Request], Recommendations] = Batcher(
            per_model(recommend_many), batching, lambda size: on_batch("Recommend", size)
        )
        self._similar: Batcher[tuple[HybridModel, tuple[int, int]], list[ScoredBook] | None] = Batcher(
            per_model(self._similar_many), batching, lambda size: on_batch("SimilarBooks", size)
        )

    def unreachable(self, exc: BaseException) -> str:
        return self._db.unreachable(exc)

    @answers(unavailable="no answer")
    async def Recommend(self, request: pb.RecommendRequest, context: Context) -> pb.RecommendResponse:
        user_id, limit = requests.reader(request)
        filters = requests.filters(request)
        page = requests.page(request)
        if page.answer is not None:
            return await self._next_page(user_id, limit, filters, page.answer, page.offset)
        model = self._loaded_model(user_id)
        events = await self._newer_events(model, user_id)
        allowed = self._fresh.facts(model).allowed(filters)
        asked = Request(user_id, page.offset + limit, events, allowed, filters.max_per_author)
        result = await self._recommendations((model, asked))
        return self._recorded_answer(user_id, model, dataclasses.replace(result, books=result.books[page.offset :]))

    async def _next_page(
        self, user_id: int, limit: int, filters: Filters, answer: uuid.UUID, offset: int
    ) -> pb.RecommendResponse:
        """The answer `answer` continued: the same version's ranking without every book its pages showed, from
        where `offset` says the pages got to."""
        first = await self._answers.first_page(answer)
        if first.user_id != user_id:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"recommendation {answer} answered another reader")
        model = self._fresh.with_new_books(self._serving(first.version))
        shown = await self._answers.shown_by(first)
        allowed = self._fresh.facts(model).allowed(filters)
        allowed = np.ones(model.num_books, dtype=bool) if allowed is None else allowed
        allowed[model.catalogue.positions(sorted(shown))] = False
        skip = max(offset - len(shown), 0)  # a page asked for beyond those shown: the books between skipped
        events = await self._newer_events(model, user_id)
        asked = Request(user_id, skip + limit, events, allowed, filters.max_per_author)
        result = await self._recommendations((model, asked))
        rest = dataclasses.replace(result, books=result.books[skip:])
        return self._recorded_answer(user_id, model, rest, continues=first.recommendation_id)

    def _recorded_answer(
        self, user_id: int, model: HybridModel, result: Recommendations, continues: uuid.UUID | None = None
    ) -> pb.RecommendResponse:
        """The answer, recorded (a later page: as the answer it continues)."""
        books = [book.book_id for book in result.books]
        recommendation_id = self._answers.record(user_id, model.meta.version, books, continues)
        return self._messages.recommend_response(user_id, model.meta.version, result, str(recommendation_id))

    def _serving(self, version: str) -> HybridModel:
        """The model of `version` while it serves (active or canary), else FAILED_PRECONDITION."""
        canary = self._versions.canary
        for model in (self._versions.model, canary.model if canary else None):
            if model is not None and model.meta.version == version:
                return model
        raise Refused(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"version {version}, which gave that answer, no longer serves: ask again without recommendation_id",
        )

    @answers(unavailable="no answer")
    async def RecommendForSession(
        self, request: pb.RecommendForSessionRequest, context: Context
    ) -> pb.RecommendForSessionResponse:
        book_ids, limit = requests.session(request)
        filters = requests.filters(request)
        model = self._loaded_model()
        facts = self._fresh.facts(model)
        known = set(model.catalogue.book_ids[model.catalogue.positions(book_ids)].tolist())
        missing = [b for b in book_ids if b not in known]
        hidden = [b for b in book_ids if b in known and facts.hides(b)]
        problems = [f"not in the catalogue: book_ids {listed_ids(missing)}"] if missing else []
        problems += [f"not available (hidden or erased): book_ids {listed_ids(hidden)}"] if hidden else []
        refuse(grpc.StatusCode.NOT_FOUND, problems)
        allowed = facts.allowed(filters)
        events = [(book_id, None) for book_id in book_ids]
        result = await self._recommendations((model, Request(0, limit, events, allowed, filters.max_per_author)))
        return self._messages.session_response(model.meta.version, result)

    @answers(unavailable="no answer")
    async def ModelInfo(self, request: pb.ModelInfoRequest, context: Context) -> pb.ModelInfoResponse:
        model = self._versions.model
        info = messages.model_info(
            self._alpha,
            self._cluster.retraining,
            self._coordinator.state if self._coordinator else None,
            await self._latest_version(),
            self._next_scheduled_retrain(),
            self._fresh.with_new_books(model) if model is not None else None,
        )
        if model is not None:
            await self._add_online(info, model.meta.version)
        return info

    @answers(unavailable="no retrain started")
    async def Retrain(self, request: pb.RetrainRequest, context: Context) -> pb.RetrainResponse:
        if not await self._coordinator_here().start(force=request.force):
            raise Refused(grpc.StatusCode.ABORTED, RETRAIN_RUNNING)
        log.info("retrain started on request%s", " (forced: the promotion gate is skipped)" if request.force else "")
        return pb.RetrainResponse(status="accepted", message=RETRAIN_ACCEPTED)

    @answers(unavailable="nothing rolled back")
    async def Rollback(self, request: pb.RollbackRequest, context: Context) -> pb.RollbackResponse:
        self._coordinator_here()
        version = requests.version(request)
        self._no_retrain_running()
        return pb.RollbackResponse(status="rolled_back", version=await self._versions.rollback(version))

    @answers(unavailable="the model registry cannot be read")
    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        records = await self._versions.registry.versions()
        return messages.model_versions(records, await self._versions.available(), await self._online.sums())

    @answers(unavailable="no canary started")
    async def StartCanary(self, request: pb.StartCanaryRequest, context: Context) -> pb.StartCanaryResponse:
        self._coordinator_here()
        version, share = requests.canary(request, self._canaries.share)
        self._no_retrain_running()
        await self._versions.start_canary(version, share)
        return pb.StartCanaryResponse(status="canary", version=version, share=share)

    @answers(unavailable="nothing promoted")
    async def PromoteCanary(self, request: pb.PromoteCanaryRequest, context: Context) -> pb.PromoteCanaryResponse:
        self._coordinator_here()
        self._no_retrain_running()
        version = await self._versions.promote_canary("promoted by hand")
        log.info("canary %s promoted by hand", version)
        return pb.PromoteCanaryResponse(status="promoted", version=version)

    @answers(unavailable="nothing aborted")
    async def AbortCanary(self, request: pb.AbortCanaryRequest, context: Context) -> pb.AbortCanaryResponse:
        self._coordinator_here()
        reason = requests.abort_reason(request)
        version = await self._versions.abort_canary(reason)
        log.info("canary %s %s", version, reason)
        return pb.AbortCanaryResponse(status="aborted", version=version)

    @answers(unavailable="the online metrics cannot be read")
    async def OnlineHistory(self, request: pb.OnlineHistoryRequest, context: Context) -> pb.OnlineHistoryResponse:
        since, bucket = requests.history_window(request)
        return messages.online_history(await self._online.store.series(since, bucket))

    @answers(unavailable="nothing recorded")
    async def RecordFeedback(self, request: pb.RecordFeedbackRequest, context: Context) -> pb.RecordFeedbackResponse:
        events = requests.feedback(request)
        invalid(await self._answers.problems(events.named))
        await self._answers.add_feedback(events.reads)
        return pb.RecordFeedbackResponse(recorded=len(events.reads))

    @answers(unavailable="no answer")
    async def Health(self, request: pb.HealthRequest, context: Context) -> pb.HealthResponse:
        return pb.HealthResponse(
            status="retraining" if self._cluster.retraining else "ok",
            models_loaded=self._versions.model is not None,
        )

    @answers(unavailable="nothing recorded")
    async def RecordInteractions(
        self, request: pb.RecordInteractionsRequest, context: Context
    ) -> pb.RecordInteractionsResponse:
        interactions, named = requests.interactions(request)
        invalid(await self._answers.problems(named.named))
        also = self._answers.feedback_writer(named.reads) if named.reads else None
        try:
            await self._catalogue.record_interactions(interactions, also)
        except UnknownBooks as exc:
            invalid(naming("interactions", request.interactions, exc.book_ids))
        # This replica answers with them at once; the others when the change notice reaches them.
        self._fresh.on_event(Event.about(Kind.INTERACTIONS, (i.user_id for i in interactions)))
        return pb.RecordInteractionsResponse(recorded=len(interactions))

    @answers(unavailable="nothing written")
    async def UpsertBooks(self, request: pb.UpsertBooksRequest, context: Context) -> pb.UpsertBooksResponse:
        try:
            counts = await self._catalogue.upsert_books(requests.books(request))
        except UntitledBooks as exc:
            untitled = naming("books", request.books, exc.book_ids, "a new book needs a title")
            invalid(untitled)
        await self._fresh.books_changed()
        return pb.UpsertBooksResponse(added=counts.added, updated=counts.updated)

    @answers(unavailable="no answer")
    async def SimilarBooks(self, request: pb.SimilarBooksRequest, context: Context) -> pb.SimilarBooksResponse:
        requests.positive("book_id", request.book_id)
        limit = requests.limit(request)
        model = self._loaded_model()
        if self._fresh.facts(model).hides(request.book_id):
            raise Refused(grpc.StatusCode.NOT_FOUND, f"book {request.book_id} is not available (hidden or erased)")
        books = await self._similar((model, (request.book_id, limit)))
        if books is None:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"book {request.book_id} is not in the catalogue")
        return messages.similar_response(request.book_id, model.meta.version, books)

    @answers(unavailable="nothing erased")
    async def DeleteUser(self, request: pb.DeleteUserRequest, context: Context) -> pb.DeleteUserResponse:
        requests.positive("user_id", request.user_id)
        rows = await _erasing(Erasure(self._db).user(request.user_id), f"user {request.user_id}")
        self._fresh.on_event(Event.about(Kind.INTERACTIONS, [request.user_id]))  # this process: at once
        return pb.DeleteUserResponse(
            status="erased",
            interactions=rows["interactions"],
            impressions=rows["impressions"],
            feedback=rows["feedback"],
        )

    @answers(unavailable="nothing erased")
    async def DeleteBook(self, request: pb.DeleteBookRequest, context: Context) -> pb.DeleteBookResponse:
        requests.positive("book_id", request.book_id)
        rows = await _erasing(Erasure(self._db).book(request.book_id), f"book {request.book_id}")
        self._fresh.on_event(Event.about(Kind.ERASED_BOOKS, [request.book_id]))  # this process: at once
        await self._fresh.books_changed()
        return pb.DeleteBookResponse(status="erased", interactions=rows["interactions"], feedback=rows["feedback"])

    @answers(unavailable="the books cannot be read")
    async def PopularBooks(self, request: pb.PopularBooksRequest, context: Context) -> pb.PopularBooksResponse:
        limit, genres = requests.listed(request)
        keys = [genre_key(g) for g in genres]
        found = await self._catalogue.popular_recently(requests.days(request), limit, keys)
        if len(found) < limit and self._versions.model is not None:  # filled up with the most liked overall
            model = self._fresh.with_new_books(self._versions.model)
            allowed = self._fresh.facts(model).allowed(Filters(genres=genres))
            have = {book.book_id for book, _ in found}
            best = recommend_many(model, [Request(0, limit + len(have), allowed=allowed)], explain=False)[0].books
            more = [b.book_id for b in best if b.book_id not in have][: limit - len(found)]
            found += [(book, 0.0) for book in await self._catalogue.books(more)]
        return pb.PopularBooksResponse(books=messages.listed(found))

    @answers(unavailable="the books cannot be read")
    async def NewBooks(self, request: pb.NewBooksRequest, context: Context) -> pb.NewBooksResponse:
        limit, genres = requests.listed(request)
        books = await self._catalogue.newest(limit, [genre_key(g) for g in genres])
        return pb.NewBooksResponse(books=messages.listed([(book, 0.0) for book in books]))

    @answers(unavailable="the interactions cannot be read")
    async def UserInteractions(
        self, request: pb.UserInteractionsRequest, context: Context
    ) -> pb.UserInteractionsResponse:
        requests.positive("user_id", request.user_id)
        rows = await self._catalogue.recent_interactions(request.user_id, requests.limit(request))
        return messages.user_interactions(request.user_id, rows)

    def _similar_many(self, model: HybridModel, asked: Sequence[tuple[int, int]]) -> list[list[ScoredBook] | None]:
        """Books like each asked one, hidden books left out."""
        return similar_to_many(model, asked, self._fresh.facts(model).allowed(NO_FILTERS))

    def _loaded_model(self, user_id: int = 0) -> HybridModel:
        """The model that answers `user_id` (the canary for its share), with the books added since its snapshot;
        UNAVAILABLE before the first one."""
        model = self._versions.model_for(user_id) if user_id else self._versions.model
        if model is None:
            raise Refused(grpc.StatusCode.UNAVAILABLE, MODEL_NOT_LOADED)
        return self._fresh.with_new_books(model)

    def _coordinator_here(self) -> RetrainCoordinator:
        """This process's retrain coordinator; FAILED_PRECONDITION in a serving worker, which has none."""
        if self._coordinator is None:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, WORKER_RETRAIN)
        return self._coordinator

    def _no_retrain_running(self) -> None:
        """Changes of the versions that serve wait for a running retrain (README: "Changes of the active version")."""
        if self._cluster.retraining:
            raise Refused(grpc.StatusCode.ABORTED, RETRAIN_RUNNING)

    async def _latest_version(self) -> VersionRecord | None:
        """The registry's newest version (what the last retrain anywhere did); the last one read while the
        database is away."""
        try:
            self._latest = await self._versions.registry.latest()
        except DATABASE_ERRORS:
            log.warning("could not read the registry; answering with what was read before")
        return self._latest

    async def _add_online(self, info: pb.ModelInfoResponse, version: str) -> None:
        """The active version's online metrics, and the canary's comparison; left out while the database is away."""
        try:
            sums = await self._online.sums()
            comparison = await compare(self._online.sums, self._versions, self._canaries.test)
        except DATABASE_ERRORS as exc:
            log.warning("could not read the online metrics: %s", exc)
            return
        if version in sums:
            info.online.CopyFrom(messages.online_metrics(sums[version]))
        canary = self._versions.canary
        if canary is not None and comparison is not None:
            info.canary.CopyFrom(messages.canary(canary, comparison, self._canaries.automatic))

    async def _newer_events(self, model: HybridModel, user_id: int) -> ReaderEvents | None:
        """The user's events when they are newer than the model; None (the model's record) when the database
        cannot be read, so that answers go on."""
        try:
            return await self._fresh.newer_events(model, user_id)
        except DATABASE_ERRORS as exc:
            log.warning("could not read the history of user %d; answering without it: %s", user_id, exc)
            return None


async def _erasing(erase: Awaitable[Erased], what: str) -> dict[str, int]:
    """The rows an erasure removed, per table, the erasure logged as the admin action it is; NOT_FOUND when there
    was nothing to erase."""
    try:
        rows = (await erase).rows
    except NothingStored as exc:
        raise Refused(grpc.StatusCode.NOT_FOUND, str(exc)) from None
    log.info("admin: erased %s (%s)", what, ", ".join(f"{n} {table}" for table, n in rows.items() if n))
    return rows
