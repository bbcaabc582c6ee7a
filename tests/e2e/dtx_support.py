"""Helpers for the distributed-commit end-to-end tests (test_distributed_commit_e2e.py).

Everything here reads the real processes' state independently of the code
under test where it can: the shards' change logs straight from their SQLite
files (read-only, plain SQL over ``_dosql_changes`` / ``_dosql_tx`` /
``_dosql_outcomes``), the lake with pyiceberg and DuckDB, the change stream
with the public subscriber client. The checks compare those views with each
other and with the shards' rows, which are the truth after the workload.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

import dosql
from dolake import readers
from dolake.subscribe import position as positions
from dosql.cluster import LocalCluster
from tests.faultkit import wait_for
from tests.router.conftest import quickstart_vschema, write_config

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# The lake flushes only when asked (sync_lake, or the router for AS OF), so until
# the first flush the shards keep their whole change log for the checks to read.
LAKE = {"flush_interval_ms": 3_600_000, "event_threshold": 10_000_000, "max_buffer_size": 1 << 30}
ENV = {
    "CDC_BATCH_TIMEOUT_MS": "50",
    "DOLAKE_SUBSCRIBE_HEARTBEAT_S": "0.3",
    "DOLAKE_SUBSCRIBE_POLL_S": "0.02",
}


def start_cluster(root: Path, env: dict[str, str] | None = None) -> LocalCluster:
    """Lake writer, the quickstart-like 4-shard VSchema and a router, on loopback."""
    cfg = write_config(
        root / "dosql.toml",
        quickstart_vschema(),
        extra={"lake": LAKE, "cdc": {"batch_size": 100}, "router": {"query_timeout_ms": 60000}},
    )
    return LocalCluster(cfg, root / "data", lake=True, env={**ENV, **(env or {})})


def fmt(micros: int) -> str:
    """UTC microseconds as a ``TIMESTAMP`` literal, exact to the microsecond."""
    return (EPOCH + dt.timedelta(microseconds=micros)).strftime("%Y-%m-%d %H:%M:%S.%f")


def micros(value: dt.datetime) -> int:
    """A timestamp read from the lake as UTC microseconds (the shards' unit)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    delta = value - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


# --------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class LoggedChange:
    """One row of a shard's change log, as the shard's own tables hold it."""

    shard: str
    lsn: int
    txid: int
    commit_ts: int | None  # None: no _dosql_tx row for the change (must never happen)
    table: str
    op: str
    key: tuple | None
    before: dict | None
    after: dict | None
    gtid: str | None
    parts: str | None


def _ro(cluster: LocalCluster, shard: str) -> sqlite3.Connection:
    db = cluster.data_dir / "shards" / f"{shard}.db"
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)


def _decode(blob: bytes | None) -> Any:
    return msgspec.msgpack.decode(blob) if blob is not None else None


def read_change_log(cluster: LocalCluster, shard: str, after_lsn: int = 0) -> list[LoggedChange]:
    """The shard's change log after ``after_lsn``, in LSN order (one read transaction).

    A LEFT JOIN, so a change whose transaction row is missing shows up (with
    ``commit_ts`` None) instead of silently vanishing from the check.
    """
    con = _ro(cluster, shard)
    try:
        rows = con.execute(
            "SELECT c.lsn, c.txid, t.commit_ts, c.tbl, c.op, c.key, c.before, c.after, t.gtid, "
            "t.parts FROM _dosql_changes c LEFT JOIN _dosql_tx t ON t.txid = c.txid "
            "WHERE c.lsn > ? ORDER BY c.lsn",
            (after_lsn,),
        ).fetchall()
    finally:
        con.close()
    out = []
    for lsn, txid, ts, tbl, op, key, before, after, gtid, parts in rows:
        k = _decode(key)
        out.append(
            LoggedChange(
                shard,
                lsn,
                txid,
                ts,
                tbl,
                op,
                tuple(k) if k is not None else None,
                _decode(before),
                _decode(after),
                gtid,
                parts,
            )
        )
    return out


class LogArchive:
    """Copies every shard's change log out of its file as it grows (a thread polling the
    files read-only, also while a shard is down), so checks see the whole log although
    the shards purge what the lake has committed.

    A flush commits changes the lake received at least one CDC batch and an Iceberg
    commit after the shard committed them; polling every 20 ms reads them long before.
    Should a purge still win, the LSN gap is recorded and the check says so.
    """

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.logs: dict[str, list[LoggedChange]] = {s: [] for s in cluster.vschema.shard_ids}
        self.gaps: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="log-archive", daemon=True)

    def start(self) -> LogArchive:
        self.poll()
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            try:
                self.poll()
            except sqlite3.Error:
                pass  # a shard mid-restart (recovery holds a lock): next time

    def poll(self) -> None:
        with self.lock:
            for s, chs in self.logs.items():
                last = chs[-1].lsn if chs else 0
                new = read_change_log(self.cluster, s, last)
                if new and new[0].lsn != last + 1:
                    self.gaps.append(f"{s}: LSNs {last + 1}..{new[0].lsn - 1} purged unread")
                chs.extend(new)

    def close(self) -> dict[str, list[LoggedChange]]:
        """Stop, read the rest, and return the whole logs (asserting nothing was missed)."""
        self.stop.set()
        self.thread.join(10)
        self.poll()
        assert not self.gaps, self.gaps
        assert all(chs and chs[0].lsn == 1 for chs in self.logs.values()), "log start missed"
        return self.logs


def lsn_heads(cluster: LocalCluster) -> dict[str, int]:
    """Per shard, the highest LSN it has committed (its change log's AUTOINCREMENT
    counter, which a purge of the log leaves as it is; 0 if none)."""
    out = {}
    for s in cluster.vschema.shard_ids:
        con = _ro(cluster, s)
        try:
            row = con.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = '_dosql_changes'"
            ).fetchone()
            out[s] = int(row[0]) if row else 0
        finally:
            con.close()
    return out


def purged_through(cluster: LocalCluster, heads: dict[str, int]) -> bool:
    """Has every shard dropped its change log up to ``heads`` (the lake committed it)?"""
    for s, lsn in heads.items():
        con = _ro(cluster, s)
        try:
            (oldest,) = con.execute("SELECT min(lsn) FROM _dosql_changes").fetchone()
        finally:
            con.close()
        if oldest is not None and oldest <= lsn:
            return False
    return True


def outcomes(cluster: LocalCluster) -> dict[str, dict[str, tuple[int, str | None]]]:
    """gtid -> {shard: (commit_ts, parts)} from every shard's ``_dosql_outcomes``."""
    out: dict[str, dict[str, tuple[int, str | None]]] = {}
    for s in cluster.vschema.shard_ids:
        con = _ro(cluster, s)
        try:
            for gtid, ts, parts in con.execute(
                "SELECT gtid, commit_ts, parts FROM _dosql_outcomes"
            ):
                out.setdefault(gtid, {})[s] = (ts, parts)
        finally:
            con.close()
    return out


def shard_rows(cluster: LocalCluster, table: str) -> dict[tuple, tuple[str, tuple]]:
    """key (the primary key ``id``) -> (owner shard, row) over every shard's file.

    A key on two shards is a half-applied move: asserted here, since every
    caller relies on keys being unique across shards.
    """
    out: dict[tuple, tuple[str, tuple]] = {}
    for s in cluster.vschema.shard_ids:
        con = _ro(cluster, s)
        try:
            rows = con.execute(f"SELECT * FROM {table}").fetchall()
        finally:
            con.close()
        for row in rows:
            key = (row[0],)
            assert key not in out, f"{table} key {key} on {out[key][0]} and {s}"
            out[key] = (s, tuple(row))
    return out


def check_gtids(
    logs: dict[str, list[LoggedChange]], outcome_rows: dict[str, dict[str, tuple[int, str | None]]]
) -> dict[str, tuple[int, tuple[str, ...]]]:
    """Check every transaction with a gtid in the shards' change logs; gtid -> (ts, parts).

    - each change has a transaction row (commit time), and a transaction's
      changes share one commit time, gtid and parts on its shard;
    - a gtid naming 2+ parts has the SAME commit time and parts on every
      shard where it has changes, and it has changes on every shard its parts
      name and on no other (all participants or none);
    - the shards' outcome rows agree with the change logs;
    - each shard's commit times never decrease along its LSNs.
    """
    seen: dict[str, dict[str, set[tuple[int, str | None]]]] = {}
    for shard, changes in logs.items():
        last_ts = 0
        by_txid: dict[int, set[tuple[int | None, str | None, str | None]]] = {}
        for ch in changes:
            assert ch.commit_ts is not None, f"{shard} LSN {ch.lsn}: no _dosql_tx row"
            assert ch.commit_ts >= last_ts, f"{shard} LSN {ch.lsn}: commit time went back"
            last_ts = ch.commit_ts
            by_txid.setdefault(ch.txid, set()).add((ch.commit_ts, ch.gtid, ch.parts))
            if ch.gtid is not None:
                seen.setdefault(ch.gtid, {}).setdefault(shard, set()).add((ch.commit_ts, ch.parts))
        for txid, stamps in by_txid.items():
            assert len(stamps) == 1, f"{shard} txid {txid}: changes disagree {stamps}"
    result: dict[str, tuple[int, tuple[str, ...]]] = {}
    for gtid, per_shard in seen.items():
        stamps = set().union(*per_shard.values())
        assert len(stamps) == 1, f"{gtid}: commit time / parts differ across shards: {per_shard}"
        ((ts, parts),) = stamps
        names = tuple(parts.split(",")) if parts else ()
        if len(names) >= 2:
            assert list(names) == sorted(set(names)), f"{gtid}: parts not sorted/unique: {parts}"
            assert set(per_shard) == set(names), (
                f"{gtid}: parts {names} but changes on {sorted(per_shard)} (half committed)"
            )
            for s in names:
                assert outcome_rows.get(gtid, {}).get(s) == (ts, parts), (
                    f"{gtid}: outcome row on {s} is {outcome_rows.get(gtid, {}).get(s)}, "
                    f"change log says {(ts, parts)}"
                )
        else:
            assert len(per_shard) == 1, f"{gtid}: local transaction on {sorted(per_shard)}"
        result[gtid] = (ts, names)
    for gtid, per_shard in outcome_rows.items():
        parts_seen = {p for _ts, p in per_shard.values()}
        assert len(parts_seen) == 1 and len({t for t, _p in per_shard.values()}) == 1, (
            f"{gtid}: outcome rows disagree: {per_shard}"
        )
        (parts,) = parts_seen
        names = tuple(parts.split(",")) if parts else ()
        if len(names) >= 2:
            assert set(per_shard) == set(names), (
                f"{gtid}: committed (outcome rows) on {sorted(per_shard)} of {names}"
            )
    return result


def state_at(
    logs: dict[str, list[LoggedChange]], table: str, columns: list[str], point: int
) -> list[tuple]:
    """``table``'s rows at commit time ``point``: each shard's log replayed up to it (a
    prefix: a shard's commit times never decrease along its LSNs), then the union."""
    cut = {s: [ch for ch in chs if (ch.commit_ts or 0) <= point] for s, chs in logs.items()}
    rows: list[tuple] = []
    for per_shard in replay_logs(cut, table).values():
        rows += [tuple(r[c] for c in columns) for r in per_shard.values()]
    return sorted(rows)


def replay_logs(logs: dict[str, list[LoggedChange]], table: str) -> dict[str, dict[tuple, dict]]:
    """Per shard, ``table``'s rows obtained by applying its change log images in LSN order."""
    out: dict[str, dict[tuple, dict]] = {}
    for shard, changes in logs.items():
        rows = out.setdefault(shard, {})
        for ch in changes:
            if ch.table != table or ch.op == "schema":
                continue
            assert ch.key is not None
            if ch.op == "delete":
                assert ch.key in rows, f"{shard} LSN {ch.lsn}: delete of absent key {ch.key}"
                assert rows.pop(ch.key) == ch.before, f"{shard} LSN {ch.lsn}: wrong before image"
            else:
                if ch.op == "update":
                    assert rows.get(ch.key) == ch.before, f"{shard} LSN {ch.lsn}: before image"
                else:
                    assert ch.key not in rows, f"{shard} LSN {ch.lsn}: insert of present key"
                rows[ch.key] = ch.after
    return out


# --------------------------------------------------------------------------- lake


def open_lake(cluster: LocalCluster) -> Any:
    return readers.open_catalog(cluster.cluster_config, data_dir=cluster.data_dir)


def flush_lake(cluster: LocalCluster) -> int:
    """Commit what the lake has received (a shard may be down: what waits for it is
    held back, as the lake's distributed-transaction cut says); how many distributed
    transactions that flush held back (the lake's /status).

    First, for a few seconds at most, let the lake receive what the running shards
    have committed, so the flush sees their parts (the ones a dead participant's
    part is missing from)."""
    from dolake.flush_cli import flush, status

    url = cluster.lake_url or ""
    live = [s for s in cluster.vschema.shard_ids if cluster.shard_alive(s)]
    heads = lsn_heads(cluster)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        sources = status(url).get("sources") or {}
        if all((sources.get(s) or {}).get("received_lsn", 0) >= heads[s] for s in live):
            break
        time.sleep(0.05)
    flush(url, wait=True, timeout=60)
    return len(status(url).get("held_back_transactions") or {})


def mirror_snapshots(cluster: LocalCluster, table: str) -> list[tuple[int, list[dict]]]:
    """Every snapshot of ``table``'s mirror on main, oldest first: (id, rows)."""
    catalog = open_lake(cluster)
    mirror = readers.load(catalog, table)
    out = []
    for entry in mirror.history():
        rows = readers.scan(catalog, table, snapshot_id=entry.snapshot_id, hidden=True)
        out.append((entry.snapshot_id, rows.to_pylist()))
    return out


def lake_mirror(cluster: LocalCluster, table: str, columns: list[str]) -> dict[tuple, tuple]:
    """key -> (owner shard, row) of the Iceberg mirror read by pyiceberg; the same rows
    read by DuckDB's ``iceberg_scan`` are asserted equal."""
    catalog = open_lake(cluster)
    data = readers.scan(catalog, table, hidden=True)
    out: dict[tuple, tuple] = {}
    for r in data.to_pylist():
        key = (r[columns[0]],)
        assert key not in out, f"mirror of {table}: key {key} twice"
        out[key] = (r["_dosql_shard"], tuple(r[c] for c in columns))
    duck = readers.duckdb_scan(catalog, table).select(columns).to_pylist()
    assert sorted(tuple(r[c] for c in columns) for r in duck) == sorted(
        row for _s, row in out.values()
    ), f"DuckDB reads another {table} mirror than pyiceberg"
    return out


def lake_change_log(cluster: LocalCluster, tables: Iterable[str]) -> dict[tuple[str, int], tuple]:
    """(shard, lsn) -> (table, op, commit_ts, gtid, parts) over the tables' lake change logs."""
    catalog = open_lake(cluster)
    out: dict[tuple[str, int], tuple] = {}
    for table in tables:
        cols = ("_shard", "_lsn", "_op", "_commit_ts", "_gtid", "_parts")
        data = catalog.load_table(("default", f"{table}__changelog")).scan(selected_fields=cols)
        for r in data.to_arrow().to_pylist():
            where = (r["_shard"], r["_lsn"])
            assert where not in out, f"lake change log holds {where} twice"
            out[where] = (table, r["_op"], micros(r["_commit_ts"]), r["_gtid"], r["_parts"])
    return out


def assert_lake_log_matches(
    lake: dict[tuple[str, int], tuple], logs: dict[str, list[LoggedChange]], tables: set[str]
) -> None:
    """The lake's change logs hold exactly the shards' changes of ``tables``, with the
    shards' commit times, gtids and parts (exactly once, nothing lost)."""
    want = {
        (ch.shard, ch.lsn): (ch.table, ch.op, ch.commit_ts, ch.gtid, ch.parts)
        for changes in logs.values()
        for ch in changes
        if ch.table in tables
    }
    missing = sorted(set(want) - set(lake))
    extra = sorted(set(lake) - set(want))
    assert not missing and not extra, f"lake change log: missing {missing[:10]}, extra {extra[:10]}"
    wrong = [(k, lake[k], want[k]) for k in want if lake[k] != want[k]]
    assert not wrong, f"lake change log rows differ from the shards': {wrong[:5]}"


# --------------------------------------------------------------------------- subscriber


@dataclass
class Sink:
    """A subscriber applying row events per key in arrival order (an upsert sink).

    It runs in a thread, reconnects from the position of the last event it
    applied whenever the stream fails (a shard down: SHARD_UNAVAILABLE), and
    keeps every event, so checks can look at how transactions were delivered.
    """

    url: str
    tables: list[str]
    rows: dict[tuple[str, tuple], dict] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    position: str | None = None
    heartbeat: str | None = None  # position of the last heartbeat
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None

    def start(self) -> Sink:
        self.thread = threading.Thread(target=self._run, name="sink", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                with dosql.subscribe(
                    self.url,
                    tables=self.tables,
                    start=self.position or "earliest",
                    heartbeats=True,
                    timeout=15,
                ) as sub:
                    for event in sub:
                        self._apply(event)
                        with self.lock:
                            self.position = sub.position
                            if event.get("type") == "heartbeat":
                                self.heartbeat = sub.position
                        if self.stop.is_set():
                            return
            except Exception as exc:  # noqa: BLE001 - SHARD_UNAVAILABLE, a dropped socket ...
                self.errors.append(f"{type(exc).__name__}: {exc}")  # ... shown if wait() fails
            time.sleep(0.2)

    def _apply(self, event: dict) -> None:
        if event.get("type") == "heartbeat":
            return
        with self.lock:
            self.events.append(event)
            op = event.get("op")
            if op is None:
                return
            key = (event["source"]["table"].lower(), tuple(event["key"]))
            if op == "d":
                self.rows.pop(key, None)
            else:
                self.rows[key] = event["after"]

    def caught_up(self, heads: dict[str, int]) -> bool:
        """A heartbeat at or past ``heads`` (it is queued after every event before it)."""
        with self.lock:
            pos = self.heartbeat
        if not pos:
            return False
        vector = positions.decode(pos)
        return all(vector.get(s, 0) >= lsn for s, lsn in heads.items())

    def wait(self, heads: dict[str, int], timeout: float = 60) -> None:
        try:
            wait_for(lambda: self.caught_up(heads), timeout, f"the subscriber to reach {heads}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its last errors: {self.errors[-3:]}") from None

    def table_rows(self, table: str) -> dict[tuple, dict]:
        with self.lock:
            return {k: dict(v) for (t, k), v in self.rows.items() if t == table}

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(30)


def check_delivery(
    events: list[dict], gtids: dict[str, tuple[int, tuple[str, ...]]]
) -> dict[str, int]:
    """Each distributed transaction's events came together, once, with its gtid, then
    one commit marker per shard that delivered events (parts = the change log's, the
    last one ``final``), and a moved key's delete before its insert. gtid -> events."""
    counts: dict[str, int] = {}
    i = 0
    while i < len(events):
        e = events[i]
        gtid = e["source"].get("gtid") if "op" in e else None
        parts = gtids.get(gtid, (0, ()))[1] if gtid else ()
        if len(parts) < 2:
            i += 1
            continue
        assert gtid not in counts, f"{gtid} delivered in two pieces"
        j = i
        while j < len(events) and "op" in events[j] and events[j]["source"]["gtid"] == gtid:
            j += 1
        body = events[i:j]
        markers = []
        while j < len(events) and events[j].get("type") == "commit" and events[j]["gtid"] == gtid:
            markers.append(events[j])
            j += 1
        assert markers, f"{gtid}: no commit marker after its events"
        assert {m["shard"] for m in markers} == {x["source"]["shard"] for x in body}
        assert [m["final"] for m in markers] == [False] * (len(markers) - 1) + [True]
        assert all(m["parts"] == list(parts) for m in markers), (gtid, markers[0]["parts"])
        assert sum(m["events"] for m in markers) == len(body)
        for k in {tuple(x["key"]) for x in body}:
            ops = [x["op"] for x in body if tuple(x["key"]) == k]
            if "d" in ops and "c" in ops and ops.count("d") == 1 and ops.count("c") == 1:
                assert ops.index("d") < ops.index("c"), (gtid, k, ops)
        counts[gtid] = len(body)
        i = j
    return counts


# --------------------------------------------------------------------------- router
