"""Credentials on the calls that change state: an API key, JWTs (HS256, and ES256 with a public key) with expiry
and audience, and reads guarded too when asked; gRPC metadata and HTTP headers alike."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from recommender.client import RecommenderClient
from recommender.settings import Settings
from recommender.v1 import recommender_pb2 as pb
from tests.support.service import RunningService, StartService, status_of, wait_until_idle, with_settings
from tests.support.waiting import wait_for

KEY = "s3cret-admin-key-4242"
JWT_SECRET = "a-long-enough-hmac-secret-for-hs256"


def client(running: RunningService, credential: str | None = None) -> RecommenderClient:
    return RecommenderClient(running.target, max_attempts=2, credential=credential)


def token(
    secret: str | bytes | ec.EllipticCurvePrivateKey,
    algorithm: str = "HS256",
    expires_in: float = 300,
    **claims: object,
) -> str:
    payload = {"sub": "ops", "exp": datetime.now(UTC) + timedelta(seconds=expires_in), **claims}
    return jwt.encode(payload, secret, algorithm=algorithm)


def test_an_api_key_guards_the_calls_that_change_state(
    start_service: StartService, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    running = start_service(settings_=with_settings(settings, api_key=KEY))
    wait_until_idle(running)
    anonymous, wrong = client(running), client(running, "not-the-key")
    assert status_of(anonymous.retrain)[0] == grpc.StatusCode.UNAUTHENTICATED
    assert "missing credentials" in status_of(anonymous.retrain)[1]
    assert status_of(wrong.retrain) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "invalid credentials: the key or token is not accepted",
    )
    assert status_of(anonymous.rollback)[0] == grpc.StatusCode.UNAUTHENTICATED
    write = [pb.InteractionInput(user_id=1, book_id=2)]
    assert status_of(lambda: anonymous.record_interactions(write))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert status_of(lambda: anonymous.upsert_books([pb.BookInput(book_id=2)]))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert status_of(lambda: anonymous.delete_user(1))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert status_of(lambda: anonymous.delete_book(2))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert client(running, KEY).record_interactions(write).recorded == 1
    assert len(anonymous.recommend(user_id=1, limit=2).recommendations) == 2  # reads stay open
    assert len(anonymous.similar_books(2, limit=2).books) == 2
    assert anonymous.health().status == "ok"
    assert client(running, KEY).retrain().status == "accepted"
    wait_until_idle(running)
    with RecommenderClient(running.target) as raw:  # x-api-key works too, as plain metadata
        stub_call = raw._stub.Retrain
        assert stub_call(pb.RetrainRequest(), metadata=(("x-api-key", KEY),), timeout=5).status == "accepted"
    wait_until_idle(running)
    assert KEY not in caplog.text


def test_reads_can_be_guarded_too(start_service: StartService, settings: Settings) -> None:
    running = start_service(settings_=with_settings(settings, api_key=KEY, auth_reads=True))
    wait_until_idle(running)
    assert status_of(lambda: client(running).recommend(user_id=1))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert status_of(lambda: client(running).list_models())[0] == grpc.StatusCode.UNAUTHENTICATED
    assert client(running).health().status == "ok"  # probes stay open
    assert len(client(running, KEY).recommend(user_id=1, limit=3).recommendations) == 3


def test_jwts_are_verified_with_expiry_and_audience(start_service: StartService, settings: Settings) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    configured = with_settings(
        settings, jwt_secret=JWT_SECRET, jwt_public_key=public_pem.decode(), jwt_audience="recommender"
    )
    running = start_service(settings_=configured)
    wait_until_idle(running)
    good = token(JWT_SECRET, aud="recommender")
    assert client(running, good).retrain().status == "accepted"
    wait_until_idle(running)
    signed = token(private, "ES256", aud="recommender")
    assert client(running, signed).retrain().status == "accepted"
    wait_until_idle(running)
    expired = token(JWT_SECRET, expires_in=-10, aud="recommender")
    assert status_of(client(running, expired).retrain) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "invalid credentials: the token has expired",
    )
    elsewhere = token(JWT_SECRET, aud="billing")
    assert status_of(client(running, elsewhere).retrain) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "invalid credentials: the token is for another audience",
    )
    forged = token("another-secret-of-sufficient-length", aud="recommender")
    assert status_of(client(running, forged).retrain)[0] == grpc.StatusCode.PERMISSION_DENIED


def _nested_genres(depth: int) -> bytes:
    """An UpsertBooksRequest whose book's genres nest `depth` lists deep, as bytes (protobuf's own encoder refuses
    nothing, but its decoder stops at 100 levels)."""

    def field(number: int, payload: bytes) -> bytes:
        size, length = len(payload), b""
        while True:
            byte, size = size & 0x7F, size >> 7
            length += bytes([byte | (0x80 if size else 0)])
            if not size:
                break
        return bytes([number << 3 | 2]) + length + payload

    genres = b""
    for _ in range(depth):
        genres = field(1, field(6, genres))  # ListValue.values[0].list_value
    book = pb.BookInput(book_id=5, title="Deep").SerializeToString() + field(5, genres)
    return field(1, book)


def test_a_body_is_decoded_only_after_its_credentials_pass_and_never_fails_the_call(
    start_service: StartService, settings: Settings
) -> None:
    running = start_service(settings_=with_settings(settings, api_key=KEY))
    wait_until_idle(running)
    deep = _nested_genres(150)
    with grpc.insecure_channel(running.target) as channel:
        upsert = channel.unary_unary(  # bytes in, bytes out
            "/recommender.v1.Recommender/UpsertBooks", request_serializer=bytes, response_deserializer=bytes
        )
        anonymous = status_of(lambda: upsert(deep))
        assert anonymous[0] == grpc.StatusCode.UNAUTHENTICATED
        keyed = status_of(lambda: upsert(deep, metadata=(("x-api-key", KEY),)))
        assert keyed[0] == grpc.StatusCode.INVALID_ARGUMENT and "nested more than 100 levels" in keyed[1]
        garbage = status_of(lambda: upsert(b"\xff\xff\xff", metadata=(("x-api-key", KEY),)))
        assert garbage[0] == grpc.StatusCode.INVALID_ARGUMENT
    counted = running.service.metrics.requests  # each answer counted once it has gone
    wait_for(lambda: counted.labels("UpsertBooks", "UNAUTHENTICATED")._value.get() == 1, timeout=5)
    wait_for(lambda: counted.labels("UpsertBooks", "INVALID_ARGUMENT")._value.get() == 2, timeout=5)
