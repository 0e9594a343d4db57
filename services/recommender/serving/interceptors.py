"""The shape every interceptor of the service shares: wrap the behaviour of a unary call, or leave it alone.

The request is decoded inside the call, after every interceptor has had its say, not by gRPC before it: a call
refused (no credentials) never has its body decoded, and a body that cannot be decoded (nested past protobuf's
limit, or malformed) is INVALID_ARGUMENT, counted and logged as any answer is, never an error of gRPC's own."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError

Behaviour = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
Decode = Callable[[bytes], Any]

# Protobuf's own limit on nested messages when it decodes (google.protobuf's default recursion limit).
MAX_NESTING = 100


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
        behaviour = cast(Behaviour, handler.unary_unary)
        if handler.request_deserializer is not None:  # the innermost interceptor: decoding moves into the call
            behaviour = decoding(behaviour, handler.request_deserializer)
        wrapped = self.wrap(details, behaviour) or behaviour
        # No deserializer: the call receives the bytes as sent, and `decoding` reads them once the call runs.
        return grpc.unary_unary_rpc_method_handler(wrapped, response_serializer=handler.response_serializer)


def decoding(behaviour: Behaviour, decode: Decode) -> Behaviour:
    """`behaviour` over the request decoded from the bytes it arrives as: INVALID_ARGUMENT when it cannot be."""

    async def decoded(data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            request = decode(data)
        except DecodeError as exc:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request message cannot be decoded (malformed, or nested more than {MAX_NESTING} levels "
                f"deep): {exc}",
            )
        return await behaviour(request, context)

    return decoded
