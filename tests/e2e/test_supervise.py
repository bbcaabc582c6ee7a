"""Supervision of `dosql up`'s children and `dosql status` (issue 18 item 5), on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dosql import cli
from dosql.cluster import LocalCluster, _current_lsn
from dosql.supervisor import Backoff, Supervisor
from tests.router.client import Client, http_json
from tests.router.conftest import quickstart_vschema, write_config


def _wait(pred: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _children(data: Path) -> dict[str, Any]:
    try:
        return json.loads((data / "supervisor.json").read_text())["children"]
    except (OSError, ValueError):
        return {}


def _restarted(data: Path, name: str, old_pid: int) -> dict[str, Any] | None:
    c = _children(data).get(name) or {}
    if c.get("state") == "running" and c.get("pid") not in (None, old_pid):
        return c
    return None


def _status(data: Path, capsys: Any) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = cli.main(["status", "--data-dir", str(data), "--json", "--timeout", "2"])
    return code, json.loads(capsys.readouterr().out)


def test_dosql_up_restarts_a_killed_lake_writer_and_shard(tmp_path: Path, capsys: Any) -> None:
    cfg = write_config(tmp_path / "c.toml", quickstart_vschema(n_shards=2))
    data = tmp_path / "data"
    stderr = open(tmp_path / "up.err", "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "dosql.cli", "up", "--config", str(cfg), "--data-dir", str(data)]
        + ["--restart-backoff", "1.5"],  # a window in which the lake is seen down
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    try:
        url = lake_url = None
        for line in proc.stdout or []:
            if line.startswith("router:"):
                url = line.split()[1]
            if line.startswith("lake:"):
                lake_url = line.split()[1]
            if line.startswith("press Ctrl-C"):
                break
        assert url and lake_url, (tmp_path / "up.err").read_text()
        with Client(url) as cl:
            cl.execute("CREATE TABLE users (tenant_id INTEGER PRIMARY KEY, name TEXT)")
            cl.execute("INSERT INTO users VALUES (1, 'a'), (2, 'b')")
        code, report = _status(data, capsys)
        assert (code, report["status"]) == (0, "ok"), report
        assert report["lake"]["up"] and set(report["shards"]) == {"shard-0", "shard-1"}
        assert report["supervisor"]["children"]["lake"]["restarts"] == 0

        # kill -9 the lake writer from outside: noticed, logged, the router sees it
        lake_pid = _children(data)["lake"]["pid"]
        os.kill(lake_pid, signal.SIGKILL)
        _wait(lambda: _children(data)["lake"]["state"] == "backoff", 5, "crash noticed")
        deep = _wait(
            lambda: (b := http_json(url, "/health/deep")[1])["status"] == "degraded" and b,
            5,
            "router /health/deep degraded",
        )
        assert deep["lake"]["status"] == "error"
        code, report = _status(data, capsys)
        assert code == 1 and report["status"] == "degraded"
        assert report["lake"]["up"] is False
        assert report["supervisor"]["children"]["lake"]["state"] in ("backoff", "starting")
        assert report["supervisor"]["children"]["lake"]["last_exit"]["signal"] == "SIGKILL"
        capsys.readouterr()
        assert cli.main(["status", "--data-dir", str(data)]) == 1
        table = capsys.readouterr().out
        assert "lake" in table and "DOWN" in table and "status: degraded" in table

        lake = _wait(lambda: _restarted(data, "lake", lake_pid), 30, "lake restarted")
        assert lake["restarts"] == 1 and lake["last_exit"]["signal"] == "SIGKILL"
        assert lake["port"] == int(lake_url.rsplit(":", 1)[1])  # the same address
        assert http_json(lake_url, "/health")[0] == 200
        events = [json.loads(x) for x in (tmp_path / "up.err").read_text().splitlines() if x]
        crash = next(e for e in events if e.get("msg", "").startswith("child exited"))
        assert crash["child"] == "lake" and crash["role"] == "lake"
        assert crash["signal"] == "SIGKILL" and crash["pid"] == lake_pid
        assert any("listening" in t for t in crash["log_tail"])

        # writes through the router still reach the restarted lake writer
        with Client(url) as cl:
            cl.execute("INSERT INTO users VALUES (3, 'c')")
        from dolake.flush_cli import flush_through

        shard_urls = {sid: s["url"] for sid, s in report["shards"].items()}
        lsns = {sid: _current_lsn(u, None) for sid, u in shard_urls.items()}
        flush_through(lake_url, lsns, timeout=30)
        _wait(lambda: _status(data, capsys)[0] == 0, 10, "status ok again")
        _, report = _status(data, capsys)
        assert all(s["lag"] == 0 for s in report["lake"]["sources"].values()), report["lake"]

        # kill -9 a shard: restarted at its address, the router reaches it again
        shard_pid = _children(data)["shard-1"]["pid"]
        os.kill(shard_pid, signal.SIGKILL)
        _wait(lambda: _restarted(data, "shard-1", shard_pid), 30, "shard restarted")
        with Client(url) as cl:
            _wait(lambda: _rows_or_none(cl) == 3, 10, "all rows readable")
        status = subprocess.run(
            [sys.executable, "-m", "dosql.cli", "status", "--data-dir", str(data)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.returncode == 0, status.stdout + status.stderr
        assert "shard-1" in status.stdout and "status: ok" in status.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        stderr.close()
    assert proc.returncode == 0
    assert not (data / "supervisor.json").exists()  # a clean stop leaves no stale state


def _rows_or_none(cl: Client) -> int | None:
    try:
        return len(cl.rows("SELECT * FROM users"))
    except Exception:
        return None


def test_status_without_a_router_is_a_connection_error(tmp_path: Path, capsys: Any) -> None:
    assert cli.main(["status", "--data-dir", str(tmp_path / "none")]) == 3
    cfg = write_config(tmp_path / "c.toml", quickstart_vschema(n_shards=1))
    with LocalCluster(cfg, tmp_path / "data", lake=False) as cluster:
        code, report = _status(tmp_path / "data", capsys)
        assert code == 0 and report["supervisor"] is None and report["lake"] is None
        cluster.kill_router()
        code, report = _status(tmp_path / "data", capsys)
        assert (code, report["status"]) == (2, "down")
        assert report["shards"]["shard-0"]["up"] is True


def test_supervise_leaves_kills_on_purpose_alone_and_restarts_others(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", quickstart_vschema(n_shards=2))
    with LocalCluster(
        cfg, tmp_path / "data", lake=False, supervise=True, backoff=Backoff(initial_s=0.1)
    ) as cluster:
        cluster.kill_shard("shard-0")  # a test's crash: stays down until start_shard
        time.sleep(0.6)
        assert not cluster.shard_alive("shard-0")
        assert cluster.supervisor_state()["shard-0"]["state"] == "stopped"
        cluster.start_shard("shard-0")
        _wait(lambda: cluster.supervisor_state()["shard-0"]["state"] == "running", 5)
        # a death nobody asked for is restarted at the same address
        pid = cluster._shards["shard-1"].popen.pid
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: cluster.supervisor_state()["shard-1"]["restarts"] == 1, 20)
        _wait(lambda: cluster.supervisor_state()["shard-1"]["state"] == "running", 20)
        assert cluster.shard_alive("shard-1")
        assert cluster._shards["shard-1"].port == int(cluster.shard_urls["shard-1"].rsplit(":")[-1])
        with Client(cluster.url) as cl:
            cl.execute("CREATE TABLE users (tenant_id INTEGER PRIMARY KEY, name TEXT)")


class _FakePopen:
    def __init__(self, code: int | None, pid: int) -> None:
        self.code, self.pid, self.returncode = code, pid, code

    def poll(self) -> int | None:
        return self.code


class _FakeProc:
    """A child that dies at once (exit 1) every time: the crash loop."""

    def __init__(self, pid: int, tmp: Path) -> None:
        self.popen = _FakePopen(1, pid)
        self.port: int | None = None
        self.on_purpose = False
        self.log_path = tmp / "x.log"

    def log_tail(self, lines: int = 20) -> str:
        return "boom"

    def close_after_exit(self) -> None:
        pass

    def kill(self) -> None:
        pass


def test_a_crash_loop_backs_off_exponentially(tmp_path: Path, capsys: Any) -> None:
    import threading

    procs = {"x": _FakeProc(1, tmp_path)}

    def respawn(name: str) -> Any:
        procs[name] = _FakeProc(procs[name].popen.pid + 1, tmp_path)
        return procs[name]

    sup = Supervisor(
        lambda: {n: ("shard", p) for n, p in procs.items()},  # type: ignore[misc]
        respawn,
        threading.RLock(),
        tmp_path / "supervisor.json",
        backoff=Backoff(initial_s=0.5, max_s=4.0, stable_s=10.0),
    )
    for n, (role, p) in {"x": ("shard", procs["x"])}.items():
        from dosql.supervisor import ChildState

        sup.states[n] = ChildState(n, role, p, started_at=0.0)  # type: ignore[arg-type]
    now, delays = 0.0, []
    for _ in range(6):
        assert sup.tick(now)  # noticed the crash: backoff
        st = sup.states["x"]
        assert st.state == "backoff" and st.next_restart_at is not None
        delays.append(round(st.next_restart_at - now, 3))
        assert not sup.tick(st.next_restart_at - 0.01)  # no restart before its time
        now = st.next_restart_at
        assert sup.tick(now) and sup.states["x"].state == "starting"
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    sup.write()
    state = json.loads((tmp_path / "supervisor.json").read_text())["children"]["x"]
    assert state["restarts"] == 6 and state["last_exit"]["code"] == 1
    assert state["crashes_in_a_row"] == 6
    # a child that stayed up stable_s: its next crash starts the streak over
    st = sup.states["x"]
    st.state, st.started_at = "running", now
    sup.tick(now + 11.0)
    assert st.failures == 1 and st.next_restart_at == pytest.approx(now + 11.5)
