"""Credentials for the calls that change state, checked once in the gRPC server so that gRPC and HTTP share them.

An API key (`Authorization: Bearer <key>` or `x-api-key: <key>`, the same as gRPC metadata), or a JWT in the
Bearer header, verified with an HS256 secret or an RS256/ES256 public key, expiry (and audience when set) checked.
Missing: UNAUTHENTICATED; present but wrong: PERMISSION_DENIED. Keys are compared in constant time and never
logged or echoed.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import jwt

from recommender.serving.interceptors import Behaviour, UnaryInterceptor
from recommender.settings import Settings
from recommender.v1 import MISSING_CREDENTIALS

log = logging.getLogger(__name__)

WRONG = "invalid credentials: the key or token is not accepted"
EXPIRED = "invalid credentials: the token has expired"
WRONG_AUDIENCE = "invalid credentials: the token is for another audience"


@dataclass(frozen=True)
class Credentials:
    api_key: str | None = None
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_audience: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Credentials:
        return cls(
            api_key=settings.api_key.get_secret_value() if settings.api_key else None,
            jwt_secret=settings.jwt_secret.get_secret_value() if settings.jwt_secret else None,
            jwt_public_key=settings.jwt_public_key,
            jwt_audience=settings.jwt_audience,
        )

    @property
    def configured(self) -> bool:
        return bool(self.api_key or self.jwt_secret or self.jwt_public_key)

    def check(self, metadata: dict[str, str]) -> tuple[grpc.StatusCode, str] | None:
        """None when the metadata carries an accepted credential; else the status and message to answer."""
        presented = metadata.get("x-api-key", "")
        authorization = metadata.get("authorization", "")
        if authorization[:7].lower() == "bearer ":
            presented = authorization[7:].strip()
        if not presented:
            return grpc.StatusCode.UNAUTHENTICATED, MISSING_CREDENTIALS
        if self.api_key and hmac.compare_digest(presented.encode(), self.api_key.encode()):
            return None
        return self._check_token(presented)

    def _check_token(self, token: str) -> tuple[grpc.StatusCode, str] | None:
        keys = [(self.jwt_secret, ["HS256"]), (self.jwt_public_key, ["RS256", "ES256"])]
        problem = WRONG
        for key, algorithms in keys:
            if not key:
                continue
            try:
                jwt.decode(
                    token,
                    key,
                    algorithms=algorithms,
                    audience=self.jwt_audience,
                    options={"require": ["exp"], "verify_aud": self.jwt_audience is not None},
                )
                return None
            except jwt.ExpiredSignatureError:
                problem = EXPIRED
            except jwt.InvalidAudienceError:
                problem = WRONG_AUDIENCE
            except jwt.PyJWTError:
                continue
        return grpc.StatusCode.PERMISSION_DENIED, problem


class AuthInterceptor(UnaryInterceptor):
    """Asks for a credential on `protected` methods (full names) when one is configured."""

    def __init__(self, credentials: Credentials, protected: Callable[[str], bool]) -> None:
        self._credentials = credentials
        self._protected = protected

    def wrap(self, details: grpc.HandlerCallDetails, behaviour: Behaviour) -> Behaviour | None:
        if not self._credentials.configured or not self._protected(details.method):
            return None
        metadata = {key: value for key, value in details.invocation_metadata or () if isinstance(value, str)}
        problem = self._credentials.check(metadata)
        if problem is None:
            return None
        code, message = problem
        log.info("refused %s: %s", details.method, message)

        async def deny(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(code, message)

        return deny
