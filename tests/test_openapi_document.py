"""The JSON API described by its OpenAPI document (generated from the proto) and fuzzed against the live gateway
with Schemathesis, every phase (coverage, fuzzing, stateful) and every check, with the admin key: no answer is a
server error, every answer matches the document, every schema-valid request is accepted and every invalid one
refused. `scripts/dev.sh faults` runs it at length."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from bench.campaign import ADMIN_KEY
from bench.edges import schemathesis_run
from bench.servers import Server
from tests.support.database import Template

EXAMPLES = 20  # per operation


@pytest.fixture(scope="module")
def api(template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with template.served(tmp_path_factory.mktemp("openapi"), API_KEY=ADMIN_KEY) as server:
        yield server


def test_the_document_declares_every_rpc_its_limits_and_its_credentials(api: Server) -> None:
    document = httpx.get(f"{api.url}/api/v1/openapi.json").json()
    assert document["openapi"].startswith("3.")
    operations = {op["operationId"]: op for path in document["paths"].values() for op in path.values()}
    assert set(operations) >= {"Recommend", "ModelInfo", "Retrain", "Rollback", "ListModels", "Health", "UpsertBooks"}
    schemas = document["components"]["schemas"]
    assert schemas["Error"]["required"] == ["detail"]
    recommend = {p["name"]: p for p in operations["Recommend"]["parameters"]}
    assert recommend["user_id"]["required"] and recommend["user_id"]["schema"]["minimum"] == 1
    assert recommend["limit"]["schema"]["maximum"] == 100
    share = schemas["StartCanaryRequest"]["properties"]["share"]
    assert (share["minimum"], share["maximum"], share["exclusiveMinimum"]) == (0, 1, True)
    assert schemas["StartCanaryRequest"]["required"] == ["version"]
    assert schemas["InteractionInput"]["additionalProperties"] is False  # nested request messages too
    assert operations["Retrain"]["security"] and "security" not in operations["Recommend"]
    assert not operations["Retrain"]["requestBody"]["required"]  # the guide's POST without a body
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert "429" not in operations["Recommend"]["responses"]


def test_schemathesis_with_every_phase_and_check_finds_nothing(api: Server) -> None:
    done = schemathesis_run(api.url, EXAMPLES)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "Stateful" in done.stdout and "Coverage" in done.stdout and "Fuzzing" in done.stdout
