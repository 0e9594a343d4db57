"""A small typed client for other services: deadlines on every call, retries on UNAVAILABLE.

    with RecommenderClient("localhost:50051") as client:
        for book in client.recommend(user_id=1, limit=5).recommendations:
            print(book.title, book.score)

Retries are gRPC's own (the channel's retry policy), with exponential backoff; RpcError reaches the caller
once they are used up or for any other status.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc

from recommender.v1 import SERVICE_NAME
from recommender.v1 import recommender_pb2 as pb
from recommender.v1 import recommender_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT = 5.0


def _service_config(max_attempts: int) -> str:
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": SERVICE_NAME}],
                    "retryPolicy": {
                        "maxAttempts": max_attempts,
                        "initialBackoff": "0.1s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


class RecommenderClient:
    """`credential`: the admin key (or a JWT), sent as `authorization: Bearer <credential>` with every call.
    `max_attempts`: tries of a call answered UNAVAILABLE (1: no retries)."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_attempts: int = 4,
        credential: str | None = None,
    ) -> None:
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {credential}"),) if credential else ()
        retries = [("grpc.enable_retries", 1), ("grpc.service_config", _service_config(max_attempts))]
        self._channel = grpc.insecure_channel(target, options=retries if max_attempts > 1 else [])
        self._stub = pb_grpc.RecommenderStub(self._channel)

    def recommend(
        self,
        user_id: int,
        limit: int | None = None,
        *,
        genres: Sequence[str] = (),
        exclude: Sequence[int] = (),
        min_year: int | None = None,
        max_year: int | None = None,
        max_per_author: int | None = None,
        timeout: float | None = None,
    ) -> pb.RecommendResponse:
        request = pb.RecommendRequest(
            user_id=user_id,
            limit=limit,
            genre=genres,
            exclude=exclude,
            min_year=min_year,
            max_year=max_year,
            max_per_author=max_per_author,
        )
        return self._stub.Recommend(request, **self._options(timeout))

    def recommend_for_session(
        self, book_ids: Sequence[int], limit: int | None = None, *, timeout: float | None = None
    ) -> pb.RecommendForSessionResponse:
        request = pb.RecommendForSessionRequest(book_ids=book_ids, limit=limit)
        return self._stub.RecommendForSession(request, **self._options(timeout))

    def delete_user(self, user_id: int, *, timeout: float | None = None) -> pb.DeleteUserResponse:
        return self._stub.DeleteUser(pb.DeleteUserRequest(user_id=user_id), **self._options(timeout))

    def delete_book(self, book_id: int, *, timeout: float | None = None) -> pb.DeleteBookResponse:
        return self._stub.DeleteBook(pb.DeleteBookRequest(book_id=book_id), **self._options(timeout))

    def model_info(self, *, timeout: float | None = None) -> pb.ModelInfoResponse:
        return self._stub.ModelInfo(pb.ModelInfoRequest(), **self._options(timeout))

    def retrain(self, *, force: bool = False, timeout: float | None = None) -> pb.RetrainResponse:
        return self._stub.Retrain(pb.RetrainRequest(force=force), **self._options(timeout))

    def rollback(self, version: str = "", *, timeout: float | None = None) -> pb.RollbackResponse:
        return self._stub.Rollback(pb.RollbackRequest(version=version), **self._options(timeout))

    def list_models(self, *, timeout: float | None = None) -> pb.ListModelsResponse:
        return self._stub.ListModels(pb.ListModelsRequest(), **self._options(timeout))

    def record_interactions(
        self, interactions: list[pb.InteractionInput], *, timeout: float | None = None
    ) -> pb.RecordInteractionsResponse:
        request = pb.RecordInteractionsRequest(interactions=interactions)
        return self._stub.RecordInteractions(request, **self._options(timeout))

    def upsert_books(self, books: list[pb.BookInput], *, timeout: float | None = None) -> pb.UpsertBooksResponse:
        return self._stub.UpsertBooks(pb.UpsertBooksRequest(books=books), **self._options(timeout))

    def similar_books(
        self, book_id: int, limit: int | None = None, *, timeout: float | None = None
    ) -> pb.SimilarBooksResponse:
        request = pb.SimilarBooksRequest(book_id=book_id)
        if limit is not None:
            request.limit = limit
        return self._stub.SimilarBooks(request, **self._options(timeout))

    def user_interactions(
        self, user_id: int, limit: int | None = None, *, timeout: float | None = None
    ) -> pb.UserInteractionsResponse:
        request = pb.UserInteractionsRequest(user_id=user_id)
        if limit is not None:
            request.limit = limit
        return self._stub.UserInteractions(request, **self._options(timeout))

    def record_feedback(
        self, events: list[pb.FeedbackEvent], *, timeout: float | None = None
    ) -> pb.RecordFeedbackResponse:
        return self._stub.RecordFeedback(pb.RecordFeedbackRequest(events=events), **self._options(timeout))

    def start_canary(
        self, version: str, share: float | None = None, *, timeout: float | None = None
    ) -> pb.StartCanaryResponse:
        request = pb.StartCanaryRequest(version=version)
        if share is not None:
            request.share = share
        return self._stub.StartCanary(request, **self._options(timeout))

    def promote_canary(self, *, timeout: float | None = None) -> pb.PromoteCanaryResponse:
        return self._stub.PromoteCanary(pb.PromoteCanaryRequest(), **self._options(timeout))

    def abort_canary(self, reason: str = "", *, timeout: float | None = None) -> pb.AbortCanaryResponse:
        return self._stub.AbortCanary(pb.AbortCanaryRequest(reason=reason), **self._options(timeout))

    def online_history(
        self, bucket_minutes: int | None = None, hours: int | None = None, *, timeout: float | None = None
    ) -> pb.OnlineHistoryResponse:
        request = pb.OnlineHistoryRequest(bucket_minutes=bucket_minutes, hours=hours)
        return self._stub.OnlineHistory(request, **self._options(timeout))

    def health(self, *, timeout: float | None = None) -> pb.HealthResponse:
        return self._stub.Health(pb.HealthRequest(), **self._options(timeout))

    def _options(self, timeout: float | None) -> dict[str, Any]:
        return {"timeout": timeout or self.timeout, "metadata": self._metadata}

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RecommenderClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
