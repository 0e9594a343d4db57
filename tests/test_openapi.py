"""The JSON API described by its OpenAPI document (generated from the proto) and fuzzed against the live gateway
with Schemathesis: no answer is a server error, every answer matches the document, every error is {"detail"}."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import create_database
from tests.test_gateway import Server, start_server

EXAMPLES = 25  # per operation; `scripts/dev.sh faults` runs the API longer


@pytest.fixture(scope="module")
def api(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(create_database(postgres_url), tmp_path_factory.mktemp("openapi"))
    yield server
    server.stop()


def api_schema(api: Server) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{api.url}/api/v1/openapi.json")


def test_the_document_is_served_and_lists_every_rpc(api: Server) -> None:
    document = httpx.get(f"{api.url}/api/v1/openapi.json").json()
    assert document["openapi"].startswith("3.")
    operations = {op["operationId"] for path in document["paths"].values() for op in path.values()}
    assert operations >= {"Recommend", "ModelInfo", "Retrain", "Rollback", "ListModels", "Health", "UpsertBooks"}
    assert document["components"]["schemas"]["Error"]["required"] == ["detail"]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_api_answers_as_its_document_says(api: Server, mode: GenerationMode) -> None:
    """Every operation of the document, with EXAMPLES generated requests each: valid ones (answered as documented)
    and invalid ones (refused with a 4xx {"detail"}, never a server error). Schemathesis' strategies are driven by
    Hypothesis here rather than through its pytest plugin, which pytest 9 no longer runs."""
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    if mode is GenerationMode.NEGATIVE:
        checks.append(negative_data_rejection)
    operations = [result.ok() for result in api_schema(api).get_all_operations()]  # type: ignore[union-attr]
    seen: Counter[str] = Counter()
    for operation in operations:
        try:
            seen[operation.label] = fuzz(operation, mode, checks, api.url)
        except Unsatisfiable:  # nothing in it can be invalid (no parameters, no body)
            assert mode is GenerationMode.NEGATIVE
    assert len(seen) >= (10 if mode is GenerationMode.POSITIVE else 6), seen
    print(f"Schemathesis ({mode.value}): {len(seen)} operations, {sum(seen.values())} examples, 0 failures")


def fuzz(operation: Any, mode: GenerationMode, checks: list[Any], url: str) -> int:
    """Runs EXAMPLES generated requests of one operation; returns how many ran."""
    calls = 0

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case: schemathesis.Case) -> None:
        nonlocal calls
        calls += 1
        response = case.call_and_validate(base_url=url, checks=checks)
        if response.status_code >= 400:
            assert set(response.json()) == {"detail"}, response.text

    call()
    return calls
