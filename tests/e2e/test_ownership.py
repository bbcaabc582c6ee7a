"""One owner per data directory: a second cluster, shard or lake writer on it is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dosql.cluster import LocalCluster
from dosql.errors import ConfigurationError
from dosql.ownership import OwnerLock
from tests.router.conftest import quickstart_vschema, write_config
from tests.shard.client import REPO, ShardProcess


def test_a_second_cluster_on_one_data_directory_is_refused(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "dosql.toml", quickstart_vschema(2))
    with LocalCluster(cfg, tmp_path / "data", lake=False) as first:
        before = (tmp_path / "data" / "cluster.toml").read_text()
        with pytest.raises(ConfigurationError) as info:
            LocalCluster(cfg, tmp_path / "data", lake=False)
        assert info.value.code == "ALREADY_RUNNING"
        assert str(os.getpid()) in info.value.message and first.url in info.value.message
        assert (tmp_path / "data" / "cluster.toml").read_text() == before  # untouched
    with LocalCluster(cfg, tmp_path / "data", lake=False):  # free again once stopped
        pass


def test_a_second_shard_on_one_database_fails_naming_the_first(tmp_path: Path) -> None:
    first = ShardProcess(tmp_path / "s.db").start()
    try:
        with pytest.raises(RuntimeError) as info:
            ShardProcess(tmp_path / "s.db").start(timeout=20)
        assert "ALREADY_RUNNING" in str(info.value)
        assert f"pid {first.proc.pid}" in str(info.value)
        assert f":{first.port}" in str(info.value)
        with first.client() as c:  # the first one is unharmed
            assert c.ping().info["shard"] == "shard-0"
    finally:
        first.kill()
    # kill -9 releases the lock with the process: a restart is never blocked
    again = ShardProcess(tmp_path / "s.db").start()
    again.kill()


def test_a_second_lake_writer_on_one_lake_is_refused(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "dosql.toml", quickstart_vschema(2))
    with LocalCluster(cfg, tmp_path / "data", lake=True):
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "dolake",
                "serve",
                "--config",
                str(tmp_path / "data" / "cluster.toml"),
                "--port",
                "0",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        assert "ALREADY_RUNNING" in second.stderr and "lake writer" in second.stderr


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    code = (
        "import sys, time; from dosql.ownership import OwnerLock; "
        f"lock = OwnerLock({str(tmp_path / 'x.lock')!r}, 'holder').acquire(); "
        "print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(ConfigurationError, match=f"holder \\(pid {proc.pid}\\)"):
            OwnerLock(tmp_path / "x.lock", "second").acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    deadline = time.monotonic() + 5
    while True:
        try:
            OwnerLock(tmp_path / "x.lock", "second").acquire().release()
            break
        except ConfigurationError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
