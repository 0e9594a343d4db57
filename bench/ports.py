"""Free loopback ports. Under pytest-xdist each worker takes ports from a range of its own, below Linux's ephemeral
range (where the servers' own "any free port" binds land): two workers, or a worker and a server's metrics
endpoint, never pick the same port between its choice and its bind. Elsewhere (benchmarks, scripts), any free
port."""

from __future__ import annotations

import itertools
import os
import socket

FIRST, PER_WORKER = 20_000, 2_000  # ports 20000-31999 for up to six workers; the ephemeral range starts at 32768


def _worker() -> int | None:
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else None


_NEXT = itertools.count()


def free_port() -> int:
    worker = _worker()
    if worker is None:
        return _any_free_port()
    start = FIRST + PER_WORKER * worker
    for _ in range(PER_WORKER):
        port = start + next(_NEXT) % PER_WORKER
        if _bindable(port):
            return port
    raise RuntimeError(f"no free port in {start}-{start + PER_WORKER - 1}")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _any_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
