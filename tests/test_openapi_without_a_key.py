"""Schemathesis against the live gateway with every phase and check and no credential at all, as a stranger calls
it: no answer is a server error or an undocumented status (a write is refused with 401 before its body is read).
A module of its own, so that it runs beside the run with the admin key (tests/test_openapi_document.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.campaign import ADMIN_KEY
from bench.edges import schemathesis_run
from bench.servers import Server
from tests.support.database import Template

EXAMPLES = 10  # per operation


@pytest.fixture(scope="module")
def api(template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with template.served(tmp_path_factory.mktemp("keyless"), API_KEY=ADMIN_KEY) as server:
        yield server


def test_schemathesis_without_a_key_finds_nothing(api: Server) -> None:
    done = schemathesis_run(api.url, EXAMPLES, credential=False)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "Stateful" in done.stdout and "Coverage" in done.stdout and "Fuzzing" in done.stdout
