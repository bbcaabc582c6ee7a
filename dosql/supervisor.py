"""Restart a local cluster's child processes that die unexpectedly, with backoff.

``dosql up`` runs the lake writer, the shards and the router as subprocesses
(:mod:`dosql.cluster`). Without a supervisor a ``kill -9`` (or an OOM kill, a
crash) of one of them goes unnoticed: nothing is printed and the cluster limps
on. The :class:`Supervisor` is one thread that polls every child a few times
a second; when one has exited and nobody asked for it (see
:meth:`dosql.cluster.LocalCluster.kill_shard` and friends, which mark a
process *stopped on purpose*), it

* logs one JSON line on stderr (``service: supervisor``) with the child's
  name and role, its PID, exit code or signal, how long it ran and the last
  lines of its log file (``<data dir>/logs/<name>.log``);
* restarts it at the same address after a delay that starts at
  ``Backoff.initial_s`` and doubles up to ``Backoff.max_s`` for each crash in
  a row, so a child that crashes at once does not spin; a child that stayed
  up ``Backoff.stable_s`` counts as healthy again and its next crash waits
  ``initial_s`` again;
* writes its view (state, restarts, last exit, next attempt per child) to
  ``<data dir>/supervisor.json``, replaced atomically on every change, which
  ``dosql status`` shows. A file is the simplest thing that outlives neither
  more nor less than needed: it is read by another process, needs no port,
  and carries the supervisor's own PID so a reader can tell a stale one.

A restarted child that does not announce its port within the start timeout is
killed and counts as another crash.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dosql.cluster import _Process

STATE_FILE = "supervisor.json"
POLL_S = 0.1
LOG_TAIL_LINES = 15


@dataclass(frozen=True)
class Backoff:
    """Delay before restart number ``n`` of a crash streak: initial * 2**(n-1), capped."""

    initial_s: float = 0.5
    max_s: float = 30.0
    stable_s: float = 60.0  # up this long: the crash streak is over

    def delay(self, failures: int) -> float:
        return min(self.max_s, self.initial_s * 2 ** max(0, failures - 1))


@dataclass
class ChildState:
    """What the supervisor knows about one child (one slot: it survives restarts)."""

    name: str
    role: str
    proc: _Process | None = None
    state: str = "running"  # running | starting | backoff | stopped (on purpose)
    restarts: int = 0
    failures: int = 0  # crashes in a row, reset after Backoff.stable_s of uptime
    started_at: float = field(default_factory=time.monotonic)
    next_restart_at: float | None = None
    last_exit: dict[str, Any] | None = None

    def as_dict(self, now: float) -> dict[str, Any]:
        proc = self.proc
        running = proc is not None and proc.popen is not None and self.state == "running"
        return {
            "role": self.role,
            "state": self.state,
            "pid": proc.popen.pid if running and proc is not None and proc.popen else None,
            "port": proc.port if proc is not None else None,
            "restarts": self.restarts,
            "crashes_in_a_row": self.failures,
            "uptime_s": round(now - self.started_at, 1) if self.state == "running" else None,
            "next_restart_in_s": (
                round(max(0.0, self.next_restart_at - now), 1)
                if self.next_restart_at is not None and self.state == "backoff"
                else None
            ),
            "last_exit": self.last_exit,
        }


def describe_exit(returncode: int | None) -> dict[str, Any]:
    """``{"code": 1}`` or ``{"signal": "SIGKILL"}`` (Popen's negative return code)."""
    if returncode is None:
        return {"code": None}
    if returncode < 0:
        try:
            return {"signal": signal.Signals(-returncode).name}
        except ValueError:
            return {"signal": str(-returncode)}
    return {"code": returncode}


def log_line(level: str, msg: str, **fields: Any) -> None:
    """One JSON object on stderr, shaped like :mod:`dosql.logs` records."""
    now = time.time()
    entry = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
        "level": level,
        "service": "supervisor",
        "msg": msg,
        **fields,
    }
    try:
        print(json.dumps(entry, default=str), file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass  # stderr gone: keep supervising


class Supervisor:
    """Polls the children ``children()`` returns and restarts the dead ones via ``respawn``.

    ``children()``: name -> (role, current process) under ``lock``;
    ``respawn(name)``: launch a new process for that name at its address, install
    it in the cluster and return it (not waited for). ``lock`` is the cluster's:
    kill/start calls made on purpose and the supervisor never interleave.
    """

    def __init__(
        self,
        children: Callable[[], dict[str, tuple[str, _Process]]],
        respawn: Callable[[str], _Process],
        lock: threading.RLock,
        state_path: Path,
        *,
        backoff: Backoff | None = None,
        start_timeout_s: float = 90.0,
    ) -> None:
        self._children = children
        self._respawn = respawn
        self._lock = lock
        self.state_path = state_path
        self.backoff = backoff or Backoff()
        self.start_timeout_s = start_timeout_s
        self.states: dict[str, ChildState] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def start(self) -> None:
        with self._lock:
            for name, (role, proc) in self._children().items():
                self.states[name] = ChildState(name, role, proc)
            self.write()
        self._thread.start()

    def stop(self) -> None:
        """Stop supervising (the cluster is shutting down); waits for the thread."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            now = time.monotonic()
            return {n: s.as_dict(now) for n, s in self.states.items()}

    # ------------------------------------------------------------------ loop

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                with self._lock:
                    if self._stop.is_set():
                        return
                    if self.tick():
                        self.write()
            except Exception as exc:  # the supervisor must outlive its own bugs
                log_line("error", "supervisor tick failed", error=repr(exc))

    def tick(self, now: float | None = None) -> bool:
        """One pass over the children; True when something changed (rewrite the file)."""
        now = time.monotonic() if now is None else now
        changed = False
        for name, (role, proc) in self._children().items():
            st = self.states.setdefault(name, ChildState(name, role, proc))
            if st.proc is not proc:  # replaced through the cluster's API (start_shard …)
                st.proc, st.state, st.started_at = proc, "running", now
                st.next_restart_at = None
                changed = True
            if getattr(proc, "on_purpose", False):
                if st.state != "stopped":
                    st.state, st.next_restart_at, changed = "stopped", None, True
                continue
            changed |= self._check(st, proc, now)
        return changed

    def _check(self, st: ChildState, proc: _Process, now: float) -> bool:
        code = proc.popen.poll() if proc.popen is not None else -1
        if st.state == "running":
            if code is None:
                return False
            self._crashed(st, proc, code, now)
            return True
        if st.state == "starting":
            if proc.port is not None and code is None:
                st.state, st.started_at = "running", now
                log_line(
                    "info",
                    "child restarted",
                    child=st.name,
                    role=st.role,
                    pid=proc.popen.pid if proc.popen else None,
                    port=proc.port,
                    restarts=st.restarts,
                )
                return True
            if code is not None:
                self._crashed(st, proc, code, now)
                return True
            if now - st.started_at > self.start_timeout_s:
                proc.kill()
                self._crashed(st, proc, proc.popen.returncode if proc.popen else None, now)
                return True
            return False
        if st.state == "backoff" and st.next_restart_at is not None and now >= st.next_restart_at:
            st.restarts += 1
            st.state, st.started_at, st.next_restart_at = "starting", now, None
            try:
                st.proc = self._respawn(st.name)
            except Exception as exc:  # e.g. cannot even exec: another crash
                st.state = "backoff"
                st.failures += 1
                st.next_restart_at = now + self.backoff.delay(st.failures)
                log_line("error", "child restart failed", child=st.name, error=repr(exc))
            return True
        return False

    def _crashed(self, st: ChildState, proc: _Process, code: int | None, now: float) -> None:
        uptime = now - st.started_at
        if st.state == "running" and uptime >= self.backoff.stable_s:
            st.failures = 0
        st.failures += 1
        delay = self.backoff.delay(st.failures)
        st.last_exit = {
            **describe_exit(code),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "uptime_s": round(uptime, 1),
            "during_start": st.state == "starting",
        }
        st.state, st.next_restart_at = "backoff", now + delay
        pid = proc.popen.pid if proc.popen is not None else None
        proc.close_after_exit()
        log_line(
            "error",
            "child exited unexpectedly; restarting",
            child=st.name,
            role=st.role,
            pid=pid,
            **describe_exit(code),
            uptime_s=round(uptime, 1),
            crashes_in_a_row=st.failures,
            restart_in_s=delay,
            log=str(proc.log_path),
            log_tail=proc.log_tail(LOG_TAIL_LINES).splitlines(),
        )

    # ------------------------------------------------------------------ state file

    def write(self) -> None:
        """Replace ``supervisor.json`` atomically (a reader never sees half a file)."""
        now = time.monotonic()
        body = {
            "pid": os.getpid(),
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "backoff": {
                "initial_s": self.backoff.initial_s,
                "max_s": self.backoff.max_s,
                "stable_s": self.backoff.stable_s,
            },
            "children": {n: s.as_dict(now) for n, s in self.states.items()},
        }
        tmp = self.state_path.with_suffix(".json.tmp")
        try:
            tmp.write_text(json.dumps(body, indent=1), encoding="utf-8")
            tmp.replace(self.state_path)
        except OSError as exc:
            log_line("warning", "cannot write supervisor state", error=repr(exc))

    def remove_file(self) -> None:
        try:
            self.state_path.unlink()
        except OSError:
            pass


def read_state(data_dir: Path) -> dict[str, Any] | None:
    """``supervisor.json`` of a data directory, with ``stale: true`` if its writer is gone."""
    path = data_dir / STATE_FILE
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pid = body.get("pid")
    alive = False
    if isinstance(pid, int):
        try:
            os.kill(pid, 0)
            alive = True
        except PermissionError:
            alive = True
        except OSError:
            alive = False
    body["stale"] = not alive
    return body
