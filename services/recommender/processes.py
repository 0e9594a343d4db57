"""Child processes that must not outlive the service."""

from __future__ import annotations

import shutil


def die_with_parent() -> list[str]:
    """A command prefix, `setpriv --pdeathsig KILL --`: the kernel kills the child when this process dies, even by
    SIGKILL, so that no orphan keeps a port. Empty without setpriv (util-linux); callers then keep a PID file."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
