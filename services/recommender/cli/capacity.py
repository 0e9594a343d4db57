"""How many serving processes a machine holds by default: one per core this process may use (its CPU affinity,
what a container's cpuset allows), as many as half the memory still available holds, each counted at the main
process's size once its model is loaded (with room for a second version during a swap)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import psutil

log = logging.getLogger("recommender")

MEMORY_SHARE = 0.5  # of the memory available now, what the serving processes beside the main one may take
SWAP_ROOM = 2.0  # a swap holds the old and the new version at once
FEWEST_BYTES = 512 * 2**20  # the least a serving process is counted at (before any model is loaded)
MOST_PROCESSES = 64
CGROUP = Path("/sys/fs/cgroup")


def serving_processes(configured: int | None) -> int:
    """RECOMMENDER_WORKERS when set; else the cores this process may use, bounded by memory (see the module)."""
    if configured is not None:
        return configured
    cores = len(os.sched_getaffinity(0))
    per_process = max(FEWEST_BYTES, int(SWAP_ROOM * psutil.Process().memory_info().rss))
    by_memory = 1 + int(MEMORY_SHARE * available_memory() // per_process)
    chosen = max(1, min(cores, by_memory, MOST_PROCESSES))
    log.info(
        "%d serving processes (%d cores to use, memory for %d; RECOMMENDER_WORKERS sets it)", chosen, cores, by_memory
    )
    return chosen


def available_memory() -> int:
    """Bytes available now: the machine's, or less when a cgroup (a container's limit) says so."""
    available = int(psutil.virtual_memory().available)
    try:
        limit = (CGROUP / "memory.max").read_text().strip()
        used = int((CGROUP / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return available
    return available if limit == "max" else max(0, min(available, int(limit) - used))
