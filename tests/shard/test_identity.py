"""A shard database's durable identity (dosql/shard/identity.py), and how the lake judges it.

In process (no servers): the identity is created once and kept across opens,
another shard id is refused with ``SHARD_ID_MISMATCH``, and the lake's verdict
on a hello (dolake/identity.py) refuses another incarnation or an LSN that
went back, and adopts on first contact.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest

from dolake import identity as lake_identity
from dosql import config, protocol
from dosql.errors import CODES, ConfigurationError, from_wire
from dosql.shard.executor import Shard
from dosql.shard.identity import ShardIdMismatchError


def _open(shard_id: str, path: Path) -> Shard:
    return Shard(shard_id, str(path), config.default().shard)


def test_identity_is_created_once_and_kept(tmp_path: Path) -> None:
    first = _open("shard-0", tmp_path / "s.db")
    ident = first.identity
    first.close()
    again = _open("shard-0", tmp_path / "s.db")
    assert again.identity == ident and ident.shard == "shard-0" and len(ident.incarnation) == 32
    again.close()
    other = _open("shard-0", tmp_path / "other.db")  # a new database: a new incarnation
    assert other.identity.incarnation != ident.incarnation
    other.close()


def test_a_database_opened_as_another_shard_is_refused(tmp_path: Path) -> None:
    _open("shard-0", tmp_path / "s.db").close()
    with pytest.raises(ShardIdMismatchError) as info:
        _open("shard-1", tmp_path / "s.db")
    exc = info.value
    assert isinstance(exc, ConfigurationError) and exc.code == "SHARD_ID_MISMATCH"
    assert (
        "'shard-0'" in exc.message and "'shard-1'" in exc.message and "--id shard-0" in exc.message
    )
    assert CODES["SHARD_ID_MISMATCH"] is ConfigurationError
    assert from_wire(exc.to_wire()).code == "SHARD_ID_MISMATCH"
    conn = sqlite3.connect(tmp_path / "s.db")  # the database was not touched
    assert conn.execute("SELECT shard FROM _dosql_identity").fetchall() == [("shard-0",)]
    conn.close()


def test_a_database_from_before_identities_gets_one(tmp_path: Path) -> None:
    shard = _open("shard-0", tmp_path / "s.db")
    shard.close()
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute("DROP TABLE _dosql_identity")
    conn.commit()
    conn.close()
    again = _open("shard-0", tmp_path / "s.db")
    assert again.identity.shard == "shard-0" and again.identity.incarnation
    again.close()


def _hello(incarnation: str, current: int) -> protocol.CDCHello:
    return protocol.CDCHello(shard="shard-0", current_lsn=current, incarnation=incarnation)


def test_the_lake_refuses_another_incarnation() -> None:
    verdict = lake_identity.judge(_hello("b" * 32, 0), known="a" * 32, committed=833, received=833)
    assert verdict.error is not None and verdict.error.code == "SHARD_IDENTITY_MISMATCH"
    assert "a" * 32 in verdict.error.message and "833" in verdict.error.message
    assert verdict.error.details["shard_incarnation"] == "b" * 32


def test_the_lake_refuses_an_lsn_that_went_back() -> None:
    # a lake from before identities: a watermark, no incarnation recorded
    verdict = lake_identity.judge(_hello("b" * 32, 0), known="", committed=833, received=833)
    assert verdict.error is not None and verdict.error.code == "SHARD_LSN_BEHIND"
    verdict = lake_identity.judge(_hello("a" * 32, 10), known="a" * 32, committed=5, received=12)
    assert verdict.error is not None and verdict.error.code == "SHARD_LSN_BEHIND"


def test_the_lake_adopts_on_first_contact_and_welcomes_the_same_database() -> None:
    assert lake_identity.judge(_hello("a" * 32, 900), known="", committed=833, received=833).adopt
    same = lake_identity.judge(_hello("a" * 32, 900), known="a" * 32, committed=833, received=833)
    assert same.error is None and not same.adopt
    # nothing of the old incarnation in the lake or its buffer: follow the new one
    fresh = lake_identity.judge(_hello("b" * 32, 0), known="a" * 32, committed=0, received=0)
    assert fresh.error is None and fresh.adopt and fresh.replaced == "a" * 32
    # a peer from before identities is taken as before
    assert (
        lake_identity.judge(_hello("", 0), known="a" * 32, committed=833, received=833).error
        is None
    )


def test_old_peers_still_decode_the_hello() -> None:
    old = msgspec.msgpack.encode({"t": "cdc_hello", "shard": "shard-0", "current_lsn": 3})
    assert protocol.decode(old) == protocol.CDCHello(shard="shard-0", current_lsn=3)
    assert protocol.decode(old).incarnation == ""


def test_a_shard_process_on_another_shards_database_does_not_start(tmp_path: Path) -> None:
    from tests.shard.client import ShardProcess

    _open("shard-0", tmp_path / "s.db").close()
    with pytest.raises(RuntimeError) as info:
        ShardProcess(tmp_path / "s.db", shard_id="shard-1").start(timeout=20)
    assert "SHARD_ID_MISMATCH" in str(info.value) and "--id shard-0" in str(info.value)
