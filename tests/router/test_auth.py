"""Auth: no token, a wrong token and a read-only token writing are refused; nothing written."""

from __future__ import annotations

import pytest
from websockets.exceptions import InvalidStatus

import dosql
from dosql.cluster import LocalCluster
from dosql.errors import AuthorizationError
from tests.router.client import Client
from tests.router.conftest import quickstart_vschema, shard_rows, write_config

TOKENS = [{"token": "adm-secret", "scope": "admin"}, {"token": "ro-secret", "scope": "read"}]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    cfg = write_config(tmp / "dosql.toml", quickstart_vschema(n_shards=2), tokens=TOKENS)
    with LocalCluster(cfg, tmp / "data", lake=False) as c:
        with Client(c.url, token="adm-secret") as cl:
            cl.execute("CREATE TABLE users (tenant_id INTEGER, name TEXT)")
            cl.execute("INSERT INTO users VALUES (1, 'a'), (2, 'b')")
        yield c


def count_on_shards(cluster):
    return sum(
        shard_rows(cluster, s, "SELECT count(*) FROM users")[0][0] for s in cluster.shard_urls
    )


@pytest.mark.parametrize("token", [None, "wrong-secret"])
def test_missing_or_wrong_token_refused(cluster, token):
    with pytest.raises(InvalidStatus) as info:
        Client(cluster.url, token=token)
    assert info.value.response.status_code == 401
    with pytest.raises(dosql.Error):
        dosql.connect(cluster.url, token=token)


def test_read_only_token_reads_but_cannot_write(cluster):
    before = count_on_shards(cluster)
    with Client(cluster.url, token="ro-secret") as cl:
        assert sorted(cl.rows("SELECT name FROM users")) == [("a",), ("b",)]
        for sql in (
            "INSERT INTO users VALUES (3, 'c')",
            "UPDATE users SET name = 'z'",
            "DELETE FROM users",
            "CREATE TABLE evil (id INTEGER PRIMARY KEY)",
            "DROP TABLE users",
        ):
            with pytest.raises(AuthorizationError) as info:
                cl.execute(sql)
            assert info.value.code == "READ_ONLY"
        with pytest.raises(AuthorizationError):
            cl.executemany("INSERT INTO users VALUES (?, ?)", [[5, "e"], [6, "f"]])
    assert count_on_shards(cluster) == before
    assert all(
        shard_rows(cluster, s, "SELECT name FROM sqlite_schema WHERE name = 'evil'") == []
        for s in cluster.shard_urls
    )
    con = dosql.connect(cluster.url, token="ro-secret", autocommit=True)
    with pytest.raises(dosql.Error) as dinfo:
        con.cursor().execute("INSERT INTO users VALUES (9, 'x')")
    assert getattr(dinfo.value, "code", None) == "READ_ONLY"
    con.close()
    assert count_on_shards(cluster) == before


def test_read_only_token_runs_no_pragma_that_changes_anything(cluster):
    from dosql.errors import DoSQLError

    with Client(cluster.url, token="ro-secret") as cl:
        for sql in (
            "PRAGMA optimize",
            "PRAGMA wal_checkpoint(TRUNCATE)",
            "PRAGMA incremental_vacuum",
        ):
            with pytest.raises(AuthorizationError) as info:
                cl.execute(sql)
            assert info.value.code == "READ_ONLY", sql
        for sql in ("PRAGMA journal_mode(DELETE)", "PRAGMA user_version = 7", "PRAGMA no_such"):
            with pytest.raises(DoSQLError) as refused:
                cl.execute(sql)
            assert refused.value.code == "NOT_SUPPORTED", sql
        # reading works: introspection, and a setting read without an argument
        assert [r[1] for r in cl.rows("PRAGMA table_info(users)")] == ["tenant_id", "name"]
        assert [r[1] for r in cl.rows("PRAGMA main.table_info('users')")] == ["tenant_id", "name"]
        assert cl.rows("PRAGMA journal_mode") == [("wal",)]
    for sid in cluster.shard_urls:
        assert shard_rows(cluster, sid, "PRAGMA user_version") == [(0,)]
    with Client(cluster.url, token="adm-secret") as cl:
        cl.execute("PRAGMA optimize")  # an admin maintains every shard
        cl.execute("PRAGMA wal_checkpoint(PASSIVE)")


def test_admin_token_writes(cluster):
    with Client(cluster.url, token="adm-secret") as cl:
        cl.execute("INSERT INTO users VALUES (10, 'j')")
        assert cl.rows("SELECT name FROM users WHERE tenant_id = 10") == [("j",)]
        cl.execute("DELETE FROM users WHERE tenant_id = 10")
