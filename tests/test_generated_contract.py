"""The contract's generated files are fresh, and the proto passes buf lint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from recommender.gateway import codegen


def test_generated_stubs_and_descriptor_match_the_proto() -> None:
    assert codegen.stale_files() == []


def test_buf_lint_passes() -> None:
    buf = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    assert buf, "buf is installed by the dev extras (buf-bin)"
    result = subprocess.run(
        [buf, "lint", str(codegen.DESCRIPTOR), "--config", str(codegen.ROOT / "buf.yaml"),
         "--path", "recommender/v1/recommender.proto"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_service_name_and_the_calls_that_change_state_are_the_protos() -> None:
    from recommender.v1 import SERVICE_NAME, STATE_CHANGING, recommender_pb2

    service = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"]
    assert service.full_name == SERVICE_NAME
    assert set(service.methods_by_name) >= STATE_CHANGING
