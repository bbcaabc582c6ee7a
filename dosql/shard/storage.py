"""Is the shard's storage writable? What failed last? (``/health/deep``, ``/status``, metrics)

Why this exists (issue 18). What SQLite does when storage goes bad under a
running shard, measured on this project's sqlite3 (see README "Storage
faults"):

- The filesystem turns read-only, or the files become unwritable (``chattr
  +i``), while a connection is open: its writes fail with ``SQLITE_IOERR_WRITE``
  ("disk I/O error"). That connection keeps its read-write file descriptors
  and works again as soon as the storage does.
- A connection *opened* while the database file cannot be opened for writing
  is silently opened read-only by SQLite's unix VFS, and stays read-only for
  its whole life: every write on it fails with ``SQLITE_READONLY`` ("attempt
  to write a readonly database") even after the storage is writable again.
  The pool hands connections out last-in first-out, so such a connection came
  straight back to the next writer: every write failed until a restart.
- A full disk: ``SQLITE_FULL`` ("database or disk is full"); SQLite rolls the
  transaction back and the connection works again once there is space.

So the shard recycles, instead of pooling, every connection that saw a storage
error or was opened while the file was not writable
(:meth:`dosql.shard.executor.Shard.release`); the next write opens a fresh
one. This module keeps the state the health check reports: a probe of the
files and free space (cached briefly: scrapes and health checks call it) and
the last storage error, which stays reported until a write commits again or
:data:`ERROR_MEMORY_S` has passed.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

STATES = ("ok", "read_only", "full", "io_error")
# A storage error without a commit since is reported for this long (an idle shard
# whose storage came back must not stay "degraded" for ever; the probe covers
# read-only and full storage, which it sees directly).
ERROR_MEMORY_S = 60.0
PROBE_CACHE_S = 1.0
_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def classify(exc: BaseException) -> str | None:
    """The storage state a sqlite3 error stands for, or None for a non-storage error."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_READONLY"):
        return "read_only"
    if name == "SQLITE_FULL":
        return "full"
    if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN")):
        return "io_error"
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return "full"
        if exc.errno in _UNWRITABLE:
            return "read_only"
        return "io_error"
    return None


def file_writable(path: str) -> bool:
    """Can ``path`` be opened for writing now (absent counts as yes)?

    ``os.access`` is no test here: a shard run as root passes it on a
    read-only filesystem and on an immutable file. Opening is the real test,
    and it is what SQLite itself does when it opens a connection.
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno in _UNWRITABLE:
            return False
        raise
    os.close(fd)
    return True


def dir_writable(directory: str) -> bool:
    """Can a file be created in ``directory`` (SQLite creates the -wal and -shm files)?"""
    probe = os.path.join(directory, f".dosql-probe-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        if exc.errno in _UNWRITABLE:
            return False
        if exc.errno == errno.ENOSPC:
            return True  # writable, but full: the free-space test reports that
        raise
    os.close(fd)
    os.unlink(probe)
    return True


@dataclass
class StorageFault:
    """The last storage error: its kind (a state name), SQLite's message and error name."""

    kind: str
    message: str
    code: str
    at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "sqlite_error": self.code,
            "at": self.at,
        }


class StorageMonitor:
    """Storage state of one shard database (thread-safe)."""

    def __init__(self, path: str, min_free_bytes: int) -> None:
        self.path = os.path.abspath(path)
        self.directory = os.path.dirname(self.path)
        self.min_free_bytes = int(min_free_bytes)
        self._lock = threading.Lock()
        self.last_error: StorageFault | None = None
        self._unresolved = False  # no write has committed since last_error
        self._last_exc = 0  # id() of the exception noted last (one error, one count)
        self.errors = {k: 0 for k in STATES if k != "ok"}  # storage errors seen, by kind
        self._probe_at = 0.0
        self._probe: dict[str, Any] = {}
        self.observe: Callable[[str], None] | None = None  # metrics: one storage error, by kind

    # ------------------------------------------------------------------ events

    def failed(self, exc: BaseException) -> str | None:
        """Note an error raised by a write path; returns its storage kind (None: not storage)."""
        kind = classify(exc)
        if kind is None:
            return None
        code = getattr(exc, "sqlite_errorname", "") or type(exc).__name__
        with self._lock:
            # commit() notes it, then execute() sees the same exception pass by
            if self._last_exc == id(exc):
                return kind
            self._last_exc = id(exc)
            self.last_error = StorageFault(kind, str(exc), code, time.time())
            self._unresolved = True
            self.errors[kind] += 1
            self._probe_at = 0.0  # look again at the next report
        if self.observe is not None:
            self.observe(kind)
        return kind

    def write_ok(self) -> None:
        """A write transaction committed: the storage takes writes again."""
        if self._unresolved:
            with self._lock:
                self._unresolved = False
                self._probe_at = 0.0  # the cached probe may predate the recovery

    # ------------------------------------------------------------------ probing

    def writable(self) -> bool:
        """Is the database file writable right now (decides whether a new connection is pooled)?"""
        try:
            return file_writable(self.path)
        except OSError:
            return False

    def probe(self) -> dict[str, Any]:
        """Writability of the files and directory, free space (cached PROBE_CACHE_S)."""
        now = time.monotonic()
        with self._lock:
            if now - self._probe_at < PROBE_CACHE_S:
                return self._probe
        out: dict[str, Any] = {}
        try:
            files = [self.path, self.path + "-wal", self.path + "-shm", self.path + ".2pc"]
            out["writable"] = dir_writable(self.directory) and all(map(file_writable, files))
            usage = shutil.disk_usage(self.directory)
            out["free_bytes"], out["total_bytes"] = usage.free, usage.total
            out["probe_error"] = None
        except OSError as exc:
            out.setdefault("writable", False)
            out["probe_error"] = str(exc)
        with self._lock:
            self._probe, self._probe_at = out, now
        return out

    def state(self) -> str:
        """``ok``, ``read_only``, ``full`` or ``io_error`` (first match, in that priority)."""
        return self.report()["state"]

    def report(self) -> dict[str, Any]:
        """What ``/health/deep`` and ``/status`` show under ``storage``."""
        probe = self.probe()
        with self._lock:
            last = self.last_error
            recent = (
                last is not None and self._unresolved and time.time() - last.at < ERROR_MEMORY_S
            )
        free = probe.get("free_bytes")
        if not probe.get("writable", False) and probe.get("probe_error") is None:
            state = "read_only"
        elif free is not None and free < self.min_free_bytes:
            state = "full"
        elif probe.get("probe_error") is not None:
            state = "io_error"
        elif recent and last is not None:
            state = last.kind
        else:
            state = "ok"
        return {
            "state": state,
            "directory": self.directory,
            "writable": probe.get("writable"),
            "free_bytes": free,
            "total_bytes": probe.get("total_bytes"),
            "min_free_bytes": self.min_free_bytes,
            "probe_error": probe.get("probe_error"),
            "last_error": last.as_dict() if last is not None else None,
            "last_error_unresolved": recent,
        }
