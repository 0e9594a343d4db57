"""Background tasks that end when asked."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancelled(task: asyncio.Task[Any] | None, seconds: float | None = None) -> None:
    """Cancels `task` and waits for it to end, at most `seconds` (None: as long as it takes), so that a stop stays
    bounded even when a library keeps the task busy past its cancellation."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        async with asyncio.timeout(seconds):
            await task
