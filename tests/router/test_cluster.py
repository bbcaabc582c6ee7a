"""LocalCluster start failures and ``dosql up`` in the foreground."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from dosql.cluster import LocalCluster, to_toml
from dosql.errors import RPCError
from tests.router.client import Client
from tests.router.conftest import quickstart_vschema, write_config


def test_failed_start_names_process_and_stops_the_rest(tmp_path):
    cfg = write_config(tmp_path / "c.toml", quickstart_vschema(n_shards=2))
    data = tmp_path / "data"
    (data / "shards" / "shard-1.db").mkdir(parents=True)  # not a database file
    with pytest.raises(RPCError) as info:
        LocalCluster(cfg, data, lake=False)
    assert "shard-1 failed to start" in info.value.message
    assert "shard-1.log" in info.value.message
    # shard-0 was stopped: its log shows it started, and its process is gone
    log0 = (data / "logs" / "shard-0.log").read_text()
    assert "listening" in log0


def _up(config, data):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dosql.cli",
            "up",
            "--config",
            str(config),
            "--data-dir",
            str(data),
            "--no-lake",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("router:"):
            url = line.split()[1]
        if line.startswith("press Ctrl-C"):
            break
    assert url, "".join(lines)
    return proc, url, lines


def _stop(proc):
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out


def test_dosql_up_runs_and_stops_cleanly_twice(tmp_path):
    cfg = write_config(tmp_path / "c.toml", quickstart_vschema(n_shards=2))
    data = tmp_path / "data"
    proc, url, lines = _up(cfg, data)
    try:
        assert url.startswith("dosql://127.0.0.1:")
        with Client(url) as cl:
            cl.execute("CREATE TABLE users (tenant_id INTEGER, name TEXT)")
            cl.execute("INSERT INTO users VALUES (1, 'a'), (2, 'b')")
    finally:
        code, out = _stop(proc)
    assert code == 0 and "stopped" in out
    assert any("dosql.connect(" in line for line in lines + out.splitlines())
    # the same data directory again: data persisted
    proc, url, _ = _up(cfg, data)
    try:
        with Client(url) as cl:
            assert sorted(cl.rows("SELECT name FROM users")) == [("a",), ("b",)]
    finally:
        code, out = _stop(proc)
    assert code == 0


def test_to_toml_round_trip():
    import tomllib

    data = {
        "log_level": "warn",
        "auth": {"tokens": [{"token": 'a"b', "scope": "admin"}]},
        "vschema": quickstart_vschema().to_dict(),
    }
    assert tomllib.loads(to_toml(data)) == data
