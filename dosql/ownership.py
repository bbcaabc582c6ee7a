"""One owner per data directory: an exclusive lock held for a process's lifetime.

Two processes writing one shard database, one lake or one cluster directory
corrupt each other quietly (two lake writers commit the same changes twice;
two ``dosql up`` overwrite each other's cluster file). So each owner takes an
``flock`` on a lock file beside what it owns and keeps it open: the kernel
drops the lock when the process exits, however it exits (kill -9 included),
so a stale lock file never blocks a restart. The file holds the owner's PID,
role and address, for the error the second process gets.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import IO, Any

from dosql.errors import ConfigurationError


class OwnerLock:
    """``OwnerLock(path, role).acquire()``; ``describe(address=...)`` once it is known."""

    def __init__(self, path: str | Path, role: str) -> None:
        self.path = Path(path)
        self.role = role
        self._file: IO[str] | None = None
        self.info: dict[str, Any] = {}

    def acquire(self) -> OwnerLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = _parse(f.read())
            f.close()
            raise ConfigurationError(
                f"{self.path.parent} is already in use by {holder.get('role', 'another process')} "
                f"(pid {holder.get('pid', '?')}"
                + (f", at {holder['address']}" if holder.get("address") else "")
                + "): only one process may own it; stop that one first, or use another "
                "data directory",
                code="ALREADY_RUNNING",
                details={"lock": str(self.path), "holder": holder},
            ) from None
        self._file = f
        self.describe()
        return self

    def describe(self, **extra: Any) -> None:
        """Write who holds the lock (pid, role, start time, and e.g. the address)."""
        if self._file is None:
            return
        self.info = {
            "pid": os.getpid(),
            "role": self.role,
            "started": self.info.get("started", time.time()),
            **{k: v for k, v in self.info.items() if k not in ("pid", "role", "started")},
            **extra,
        }
        self._file.seek(0)
        self._file.truncate()
        self._file.write(json.dumps(self.info))
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def _parse(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
