"""How many serving processes a machine gets by default (cli/capacity.py): the cores the process may use, bounded
by memory; RECOMMENDER_WORKERS overrides."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from recommender.cli import capacity

GiB = 2**30


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A machine whose cores, free memory and own size the test sets."""
    state = SimpleNamespace(cores=8, available=64 * GiB, rss=GiB)
    monkeypatch.setattr(capacity.os, "sched_getaffinity", lambda _pid: set(range(state.cores)))
    monkeypatch.setattr(capacity, "available_memory", lambda: state.available)
    monkeypatch.setattr(
        capacity.psutil, "Process", lambda: SimpleNamespace(memory_info=lambda: SimpleNamespace(rss=state.rss))
    )
    return state


def test_one_serving_process_per_core_the_process_may_use(machine: SimpleNamespace) -> None:
    assert capacity.serving_processes(None) == 8
    machine.cores = 2  # a cpuset of two cores on a bigger machine
    assert capacity.serving_processes(None) == 2


def test_memory_bounds_the_processes_each_counted_with_room_for_a_swap(machine: SimpleNamespace) -> None:
    machine.rss, machine.available = 2 * GiB, 16 * GiB  # half of 16 GiB holds two more at 4 GiB each
    assert capacity.serving_processes(None) == 3
    machine.available = GiB  # no room for another: the main process alone
    assert capacity.serving_processes(None) == 1


def test_the_setting_overrides_the_machine(machine: SimpleNamespace) -> None:
    machine.available = 0
    assert capacity.serving_processes(3) == 3


def test_a_containers_memory_limit_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path
    (folder / "memory.max").write_text(f"{2 * GiB}\n")
    (folder / "memory.current").write_text(f"{GiB}\n")
    monkeypatch.setattr(capacity, "CGROUP", folder)
    assert capacity.available_memory() <= GiB
    (folder / "memory.max").write_text("max\n")
    assert capacity.available_memory() > 0
