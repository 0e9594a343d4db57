"""The shape every interceptor of the service shares: wrap the behaviour of a unary call, or leave it alone."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc

Behaviour = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class UnaryInterceptor(grpc.aio.ServerInterceptor):
    def wrap(self, details: grpc.HandlerCallDetails, behaviour: Behaviour) -> Behaviour | None:
        """The behaviour to run instead of `behaviour` for this call; None to leave the call as it is."""
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        wrapped = self.wrap(details, cast(Behaviour, handler.unary_unary))
        if wrapped is None:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            wrapped, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
