"""Child processes that must not outlive the service."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal

import psutil

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> list[str]:
    """A command prefix, `setpriv --pdeathsig KILL --`: the kernel kills the child when this process dies, even by
    SIGKILL, so that no orphan keeps a port. Empty without setpriv (util-linux); callers then keep a PID file."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def die_with_parent_now(parent: int | None = None) -> None:
    """The same for this process, from inside it (a process that multiprocessing starts, which no command prefix
    reaches): SIGKILL when the parent thread ends. With `parent`, a parent that died before the call (this process
    was then handed to another) ends this one at once. Linux only; elsewhere nothing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def is_alive(pid: int) -> bool:
    """Whether a process with this pid runs (one killed but not yet reaped by its parent, a zombie, does not)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
