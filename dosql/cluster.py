"""LocalCluster: the lake writer, one shard per VSchema shard and a router, on this machine.

Every service is a real subprocess (``sys.executable -m …``) listening on a
free loopback port: it is started with port 0 and announces the port it bound
as a JSON line on stdout, which the cluster reads; everything else the
process prints (stdout and stderr) goes to ``<data_dir>/logs/<name>.log``.
If a process fails to start, the ones already started are stopped and the
error names the process and shows the tail of its log.

Layout of ``data_dir``: ``shards/<id>.db`` (shard databases, kept across
runs), ``logs/``, ``lake/`` (warehouse and catalog, when the lake runs) and
``cluster.toml``: the given config with the VSchema inline, shard addresses,
the router URL (``router.url``) and the lake URL, warehouse and catalog
filled in — the file the router (and any tool) can be pointed at, and the one
the CLI reads when run beside the data directory (:mod:`dosql.discovery`).

Supervision (``supervise=True``; ``dosql up`` turns it on): a
:class:`dosql.supervisor.Supervisor` thread notices a child that died
unexpectedly, logs it and restarts it at the same address with exponential
backoff; its view is in ``<data_dir>/supervisor.json``. It is opt-in because
the fault tests drive crashes themselves (``kill_shard`` … ``start_shard``)
and must see a killed process stay dead until they start it. And even with
supervision on, a process ended through this class's own ``kill_*`` /
``stop_*`` methods is marked *stopped on purpose* and left alone until the
matching ``start_*`` brings it back; only a death nobody asked for (``kill -9``
from outside, a crash, the OOM killer) is restarted. Every kill/start method
and the supervisor's pass take one lock, so the two never interleave.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from dosql import config as config_mod
from dosql.errors import RPCError
from dosql.ownership import OwnerLock
from dosql.supervisor import STATE_FILE, Backoff, Supervisor
from vschema.tomlw import dumps as to_toml

START_TIMEOUT_S = float(os.environ.get("DOSQL_START_TIMEOUT_S", "90"))
STOP_TIMEOUT_S = 10.0


class _Process:
    """One service subprocess and the thread that copies its stdout to its log."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self._announced = threading.Event()
        self._log: IO[bytes] | None = None
        # ended through LocalCluster.kill_*/stop_*: the supervisor must not restart it
        self.on_purpose = False

    def launch(self) -> None:
        self.port = None
        self._announced.clear()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self._log.write(f"--- starting {' '.join(self.argv)}\n".encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=self.env,
            start_new_session=True,  # Ctrl-C reaches the launcher, which stops us in order
        )
        threading.Thread(target=self._pump, name=f"log-{self.name}", daemon=True).start()

    def _pump(self) -> None:
        assert self.popen is not None and self.popen.stdout is not None
        log = self._log
        for line in self.popen.stdout:
            if log is not None and not log.closed:
                try:
                    log.write(line)
                    log.flush()
                except ValueError:
                    pass
            if not self._announced.is_set():
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if isinstance(msg, dict) and msg.get("event") == "listening":
                    self.port = int(msg["port"])
                    self._announced.set()
        self._announced.set()  # EOF: wake the waiter; it sees the exit

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> int:
        assert self.popen is not None
        self._announced.wait(timeout)
        if self.port is None:
            code = self.popen.poll()
            self.kill()
            why = (
                f"exited with code {code}" if code is not None else f"no announce in {timeout:.0f}s"
            )
            raise RPCError(
                f"{self.name} failed to start ({why}); last lines of {self.log_path}:\n"
                + self.log_tail(),
                code="RPC_UNAVAILABLE",
                details={"process": self.name, "log": str(self.log_path)},
            )
        return self.port

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
            except ProcessLookupError:
                pass
        self._close()

    def kill(self) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            try:
                self.popen.kill()
            except ProcessLookupError:
                pass
            self.popen.wait()
        self._close()

    def close_after_exit(self) -> None:
        """Reap an exited process and close its pipe and log (the supervisor's cleanup)."""
        if self.popen is not None:
            self.popen.poll()
        self._close()

    def _close(self) -> None:
        if self.popen is not None and self.popen.stdout is not None:
            try:
                self.popen.stdout.close()
            except OSError:
                pass
        if self._log is not None:
            try:
                self._log.close()
            except OSError:
                pass


class LocalCluster:
    """Lake writer (optional), shards and router as subprocesses; a context manager."""

    def __init__(
        self,
        config_path: str | os.PathLike[str],
        data_dir: str | os.PathLike[str],
        *,
        lake: bool = True,
        env: dict[str, str] | None = None,
        supervise: bool = False,
        backoff: Backoff | None = None,
    ) -> None:
        self.config_path = Path(config_path)
        self.data_dir = Path(data_dir).resolve()
        self.env = {**os.environ, **(env or {})}
        self.config = config_mod.load(self.config_path, env=self.env)
        self.vschema = self.config.load_vschema()
        self.raw = tomllib.loads(self.config_path.read_text(encoding="utf-8"))
        self.cluster_config = self.data_dir / "cluster.toml"
        self.want_lake = lake and importlib.util.find_spec("dolake.serve_cli") is not None
        self.lake_url: str | None = None
        self.shard_urls: dict[str, str] = {}
        self.url: str | None = None
        self._shards: dict[str, _Process] = {}
        self._shard_ports: dict[str, int] = {}
        self._lake: _Process | None = None
        self._router: _Process | None = None
        self._stopped = False
        self._lock = threading.RLock()  # kill/start on purpose vs. the supervisor's pass
        self.supervisor: Supervisor | None = None
        # One cluster per data directory: a second `dosql up` on it fails, naming the first.
        self._owner = OwnerLock(self.data_dir / "cluster.lock", "a dosql cluster")
        atexit.register(self.stop)
        try:
            self._start()
            if supervise:
                self.supervisor = Supervisor(
                    self._children,
                    self._respawn,
                    self._lock,
                    self.data_dir / STATE_FILE,
                    backoff=backoff,
                    start_timeout_s=START_TIMEOUT_S,
                )
                self.supervisor.start()
        except BaseException:
            self.stop()
            raise

    # ------------------------------------------------------------------ startup

    def _python(self, *args: str) -> list[str]:
        return [sys.executable, "-m", *args]

    def _write_config(self) -> None:
        raw = dict(self.raw)
        vs = self.vschema
        if self.shard_urls:
            vs = vs.with_addresses(self.shard_urls)
        raw["vschema"] = vs.to_dict()
        lake = dict(raw.get("lake", {}))
        lake.setdefault("warehouse", str(self.data_dir / "lake" / "warehouse"))
        lake.setdefault("catalog_uri", f"sqlite:///{self.data_dir / 'lake' / 'catalog.db'}")
        if not lake.get("warehouse"):
            lake["warehouse"] = str(self.data_dir / "lake" / "warehouse")
        if not lake.get("catalog_uri"):
            lake["catalog_uri"] = f"sqlite:///{self.data_dir / 'lake' / 'catalog.db'}"
        if self.lake_url:
            lake["url"] = self.lake_url
        lake["port"] = 0
        raw["lake"] = lake
        router = dict(raw.get("router", {}))
        router["port"] = 0
        if self.url:
            router["url"] = self.url
        raw["router"] = router
        tmp = self.cluster_config.with_suffix(".toml.tmp")
        tmp.write_text(to_toml(raw), encoding="utf-8")
        tmp.replace(self.cluster_config)

    def _start(self) -> None:
        self._owner.acquire()
        for sub in ("shards", "logs", "lake"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        self._write_config()
        if self.want_lake:
            self._lake = self._new_lake()
            self._lake.launch()
            port = self._lake.wait_ready()
            self.lake_url = f"ws://127.0.0.1:{port}"
            self._write_config()
        for s in self.vschema.shards:
            self._shards[s.id] = self._new_shard(s.id, 0)
            self._shards[s.id].launch()
        for sid, proc in self._shards.items():
            port = proc.wait_ready()
            self._shard_ports[sid] = port
            self.shard_urls[sid] = f"ws://127.0.0.1:{port}"
        self._write_config()
        self._router = self._new_router(0)
        self._router.launch()
        self._router_port = self._router.wait_ready()
        self.url = f"dosql://127.0.0.1:{self._router_port}"
        self._owner.describe(address=self.url)
        self._write_config()  # with router.url: the CLI finds the cluster from this file

    def _new_router(self, port: int, env: dict[str, str] | None = None) -> _Process:
        argv = self._python(
            "dosql.router",
            "--config",
            str(self.cluster_config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        )
        log_path = self.data_dir / "logs" / "router.log"
        return _Process("router", argv, log_path, {**self.env, **(env or {})})

    def _new_lake(self) -> _Process:
        return _Process(
            "lake",
            self._python(
                "dolake",
                "serve",
                "--config",
                str(self.cluster_config),
                "--host",
                "127.0.0.1",
                "--port",
                str(getattr(self, "_lake_port", 0)),
            ),
            self.data_dir / "logs" / "lake.log",
            self.env,
        )

    def _new_shard(self, shard_id: str, port: int, env: dict[str, str] | None = None) -> _Process:
        argv = self._python(
            "dosql.shard",
            "--id",
            shard_id,
            "--db",
            str(self.data_dir / "shards" / f"{shard_id}.db"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--config",
            str(self.cluster_config),
        )
        if self.lake_url:
            argv += ["--lake-url", self.lake_url]
        log_path = self.data_dir / "logs" / f"{shard_id}.log"
        return _Process(shard_id, argv, log_path, {**self.env, **(env or {})})

    # ------------------------------------------------------------------ faults

    def _shard(self, shard_id: str) -> _Process:
        if shard_id not in self._shards:
            raise KeyError(f"no shard {shard_id!r}; shards: {', '.join(self._shards)}")
        return self._shards[shard_id]

    def kill_shard(self, shard_id: str) -> None:
        """SIGKILL one shard (a crash; on purpose: the supervisor leaves it down)."""
        with self._lock:
            proc = self._shard(shard_id)
            proc.on_purpose = True
            proc.kill()

    def stop_shard(self, shard_id: str) -> None:
        """SIGTERM one shard and wait for it to exit (it stays down until start_shard)."""
        with self._lock:
            proc = self._shard(shard_id)
            proc.on_purpose = True
            proc.stop()

    def start_shard(self, shard_id: str, env: dict[str, str] | None = None) -> None:
        """Start a stopped or killed shard again at the same address.

        ``env``: extra environment for this run of it (``DOSQL_CRASH_AT``, faults.py).
        """
        with self._lock:
            proc = self._shard(shard_id)
            if proc.alive:
                return
            port = self._shard_ports[shard_id]
            self._shards[shard_id] = self._relaunch(lambda: self._new_shard(shard_id, port, env))

    def shard_alive(self, shard_id: str) -> bool:
        return self._shard(shard_id).alive

    def kill_router(self) -> None:
        """SIGKILL the router (a crash; on purpose: the supervisor leaves it down)."""
        with self._lock:
            if self._router is not None:
                self._router.on_purpose = True
                self._router.kill()

    def start_router(self, env: dict[str, str] | None = None) -> None:
        """Start a killed router again at the same address (``env`` as for start_shard)."""
        with self._lock:
            if self._router is not None and self._router.alive:
                return
            self._router = self._relaunch(lambda: self._new_router(self._router_port, env))

    def _relaunch(self, make: Callable[[], _Process]) -> _Process:
        last: Exception | None = None
        for _ in range(10):  # the port may linger briefly after a kill
            proc = make()
            proc.launch()
            try:
                proc.wait_ready()
                return proc
            except RPCError as exc:
                last = exc
                time.sleep(0.5)
        assert last is not None
        raise last

    def kill_lake(self) -> None:
        """SIGKILL the lake writer (on purpose: the supervisor leaves it down)."""
        with self._lock:
            if self._lake is not None:
                self._lake.on_purpose = True
                self._lake.kill()

    def start_lake(self) -> None:
        with self._lock:
            if self._lake is None or self._lake.alive or not self.lake_url:
                return
            self._lake_port = int(self.lake_url.rsplit(":", 1)[1])
            for _ in range(10):
                self._lake = self._new_lake()
                self._lake.launch()
                try:
                    self._lake.wait_ready()
                    return
                except RPCError:
                    time.sleep(0.5)
            raise RPCError(f"lake failed to restart on {self.lake_url}", code="RPC_UNAVAILABLE")

    # ------------------------------------------------------------------ supervision

    def _children(self) -> dict[str, tuple[str, _Process]]:
        """Every child process by name (``lake``, the shard ids, ``router``) with its role."""
        out: dict[str, tuple[str, _Process]] = {}
        if self._lake is not None:
            out["lake"] = ("lake", self._lake)
        for sid, proc in self._shards.items():
            out[sid] = ("shard", proc)
        if self._router is not None:
            out["router"] = ("router", self._router)
        return out

    def _respawn(self, name: str) -> _Process:
        """Launch a new process for child ``name`` at its old address (not waited for)."""
        if name == "lake":
            assert self.lake_url
            self._lake_port = int(self.lake_url.rsplit(":", 1)[1])
            proc = self._lake = self._new_lake()
        elif name == "router":
            proc = self._router = self._new_router(self._router_port)
        else:
            proc = self._shards[name] = self._new_shard(name, self._shard_ports[name])
        proc.launch()
        return proc

    def supervisor_state(self) -> dict[str, dict[str, Any]]:
        """Per child: state, restarts, last exit (empty without ``supervise=True``)."""
        return self.supervisor.snapshot() if self.supervisor is not None else {}

    # ------------------------------------------------------------------ lake

    def shard_lsns(self) -> dict[str, int]:
        """Each shard's current LSN: everything it has committed so far."""
        return {sid: _current_lsn(url, self._admin_token()) for sid, url in self.shard_urls.items()}

    def sync_lake(self, timeout: float = 60.0) -> dict[str, Any]:
        """Flush into Iceberg everything the shards have committed so far, and wait.

        Returns the lake writer's flush reply (snapshots and watermarks).
        """
        if not self.lake_url:
            raise RPCError("this cluster runs without a lake writer", code="RPC_UNAVAILABLE")
        from dolake.flush_cli import flush_through

        return flush_through(
            self.lake_url, self.shard_lsns(), token=self._admin_token(), timeout=timeout
        )

    def _admin_token(self) -> str | None:
        return next((t.token for t in self.config.tokens if t.scope == "admin"), None)

    # ------------------------------------------------------------------ lifecycle

    @property
    def router_alive(self) -> bool:
        return self._router is not None and self._router.alive

    def stop(self) -> None:
        """Stop the router, then the shards, then the lake writer."""
        if self._stopped:
            return
        self._stopped = True
        if self.supervisor is not None:  # first: the stops below are not crashes
            self.supervisor.stop()
            self.supervisor.remove_file()
        if self._router is not None:
            self._router.stop()
        for proc in self._shards.values():
            if proc.popen is not None and proc.popen.poll() is None:
                try:
                    proc.popen.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self._shards.values():
            proc.stop()
        if self._lake is not None:
            self._lake.stop()
        self._owner.release()
        atexit.unregister(self.stop)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _current_lsn(url: str, token: str | None) -> int:
    from websockets.sync.client import connect

    from dosql import protocol

    headers = {"Authorization": f"Bearer {token}"} if token else None
    with connect(url, additional_headers=headers, open_timeout=10) as ws:
        ws.send(protocol.encode(protocol.LsnInfo(id=1)))
        reply = protocol.decode(ws.recv(timeout=10))
    if isinstance(reply, protocol.Error):
        raise reply.to_exception()
    if not isinstance(reply, protocol.Ok):
        raise RPCError(f"unexpected reply {type(reply).__name__} to LsnInfo from {url}")
    return int(reply.info["current_lsn"])
