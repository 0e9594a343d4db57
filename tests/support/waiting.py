"""Waiting for a condition, boundedly."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], bool], timeout: float = 60, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def seconds_until(condition: Callable[[], bool], timeout: float = 10) -> float:
    """How long `condition` took to hold (AssertionError past `timeout`)."""
    started = time.monotonic()
    wait_for(condition, timeout, interval=0.02)
    return time.monotonic() - started
