"""What one live process owns: a data folder, an Envoy's HTTP port. Like PostgreSQL's postmaster.pid, a claim is a
file that names its owner; unlike a PID in a file, it is an exclusive `flock` that the kernel releases when the
owner dies (SIGKILL included), so a second process asking for it learns whether the owner lives without guessing
from a PID that may have been reused. A file left by a dead owner is taken over as it is."""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any


class Claimed(RuntimeError):
    """Another live process holds the claim; the message names it."""


@dataclass
class Claim:
    """An exclusive claim on `path`, held until `release()` (or the process ends)."""

    path: Path
    _fd: int

    @classmethod
    def take(cls, path: Path, what: str, **owner: object) -> Claim:
        """Claims `path` for this process, describing it by `owner` (ports, command); raises Claimed naming the
        live owner (`what`: what is claimed, in words), or OSError when the folder cannot be written."""
        path.parent.mkdir(parents=True, exist_ok=True)
        # Close-on-exec: Envoy, pg_ctl and the workers never inherit it, so it ends with this process alone.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read(fd))
            os.close(fd)
            raise Claimed(f"{what} belongs to a running process ({holder})") from None
        claim = cls(path, fd)
        claim.describe(**owner)
        return claim

    def describe(self, **owner: object) -> None:
        """Rewrites what the file says of its owner (a port known only once it is bound, say)."""
        known = _read(self._fd)
        record = {"pid": os.getpid(), "since": known.get("since") if known.get("pid") == os.getpid() else None}
        record["since"] = record["since"] or datetime.now(UTC).isoformat(timespec="seconds")
        text = json.dumps(record | {k: v for k, v in owner.items() if v is not None}) + "\n"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, text.encode(), 0)

    def release(self) -> None:
        """Gives the claim up; the file stays (removing it would race with a process opening it), emptied."""
        if self._fd < 0:
            return
        os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> Claim:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read(fd: int) -> dict[str, Any]:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace")
        found = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "it is starting or stopping"
    parts = [f"pid {owner.get('pid', '?')}"]
    parts += [f"{key} {value}" for key, value in owner.items() if key not in ("pid", "since")]
    if owner.get("since"):
        parts.append(f"since {owner['since']}")
    return ", ".join(parts)
