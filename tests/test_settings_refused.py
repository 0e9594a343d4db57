"""What the entry points (python server.py, python train.py, recommender import) refuse before they start anything: a
bad setting, a bad DATABASE_URL, a bad flag, GPU training without CUDA; each a clear line naming what to change, and
exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.servers import ROOT
from tests.test_csv_import import BOOKS, write


def test_bad_setting_stops_start_up_naming_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "RECOMMENDER_ALPHA": "lots", "RECOMMENDER_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "server.py"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "RECOMMENDER_ALPHA" in result.stderr and "'lots'" in result.stderr
    assert not (tmp_path / "pgdata").exists()  # nothing started
    env = {**os.environ, "RECOMMENDER_DATA_DIR": "/proc/nope"}  # a folder that cannot be one
    result = subprocess.run(
        [sys.executable, "server.py"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("recommender: invalid setting: RECOMMENDER_DATA_DIR: cannot use '/proc/nope'")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("notaurl", "DATABASE_URL: must be a PostgreSQL URL like postgresql://user:password@host:5432/dbname"),
        ("postgresql://postgres@127.0.0.1:1/shop", "DATABASE_URL: cannot connect to PostgreSQL at 127.0.0.1:1/shop"),
    ],
)
@pytest.mark.parametrize("command", [["server.py"], ["train.py"], ["-m", "recommender.cli", "import", "--books"]])
def test_a_bad_database_url_is_one_line_naming_it(tmp_path: Path, url: str, problem: str, command: list[str]) -> None:
    if command[-1] == "--books":
        command = [*command, str(write(tmp_path, "b.csv", BOOKS))]
    env = {**os.environ, "DATABASE_URL": url, "RECOMMENDER_DATA_DIR": str(tmp_path / "var")}
    result = subprocess.run(
        [sys.executable, *command], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "DATABASE_URL" in line]
    assert len(errors) == 1 and problem in errors[0], result.stderr


def test_a_bad_flag_is_named_as_the_flag(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "train.py", "--alpha", "5"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
        env={**os.environ, "RECOMMENDER_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 2
    assert "--alpha: must be between 0 and 1, or auto (got 5.0)" in result.stderr
    assert "RECOMMENDER_ALPHA" not in result.stderr


def test_gpu_training_without_cuda_stops_start_up_clearly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "train.py"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
        env={**os.environ, "RECOMMENDER_TRAIN_DEVICE": "gpu", "RECOMMENDER_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 2
    assert "RECOMMENDER_TRAIN_DEVICE=gpu, but CUDA is not usable here" in result.stderr
    assert not (tmp_path / "pgdata").exists()
