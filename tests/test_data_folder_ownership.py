"""A data folder and its ports belong to one live process: a claim held by a live process is refused naming it,
and one left by a process that died (SIGKILL included) is taken over."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from recommender.claims import Claim, Claimed

HOLDER = """
import sys, time
from pathlib import Path
from recommender.claims import Claim
claim = Claim.take(Path(sys.argv[1]), "the test folder", command="holder", http="127.0.0.1:8001")
print("held", flush=True)
time.sleep(60)
"""


def hold(path: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_live_owner_is_named_and_its_file_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "var" / "server.lock"
    holder = hold(path)
    try:
        before = path.read_text()
        with pytest.raises(Claimed) as refused:
            Claim.take(path, "the data folder var", command="second")
        message = str(refused.value)
        assert message.startswith("the data folder var belongs to a running process (pid ")
        assert f"pid {holder.pid}" in message and "http 127.0.0.1:8001" in message and "since " in message
        assert path.read_text() == before
    finally:
        holder.kill()
        holder.wait()


def test_a_claim_left_by_a_killed_owner_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "server.lock"
    holder = hold(path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert json.loads(path.read_text())["pid"] == holder.pid  # the dead owner's file is still there
    with Claim.take(path, "the data folder", command="next") as claim:
        owner = json.loads(path.read_text())
        assert owner["command"] == "next" and owner["pid"] != holder.pid
        claim.describe(command="next", grpc="127.0.0.1:5")
        assert json.loads(path.read_text())["grpc"] == "127.0.0.1:5"
        assert json.loads(path.read_text())["since"] == owner["since"]
    assert path.read_text() == ""  # released: nobody
    Claim.take(path, "the data folder").release()
