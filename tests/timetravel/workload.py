"""A two-shard change workload with known commit times, and its exact replay.

The workload is what shards would stream: per shard, gap-free LSNs, one
commit timestamp per transaction, key moves between shards logged as a
delete on the old shard then an insert on the new one. The replay applies
each shard's changes up to a point to that shard's own SQLite database (as
the shard did) and returns the union of the shards' rows: the ground truth
that ``dolake.history`` must reproduce from the lake.
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass, field

from dosql import protocol

US = 1_700_000_000_000_000
SHARDS = ("shard-0", "shard-1")

USERS_COLS = [
    protocol.ColumnInfo("id", "INTEGER", False, 1),
    protocol.ColumnInfo("name", "TEXT", False, 0),
    protocol.ColumnInfo("n", "INTEGER", False, 0),
    protocol.ColumnInfo("score", "REAL", False, 0),
]
REF_COLS = [
    protocol.ColumnInfo("code", "TEXT", False, 1),
    protocol.ColumnInfo("label", "TEXT", False, 0),
]
EVENTS_COLS = [
    protocol.ColumnInfo("kind", "TEXT", False, 0),
    protocol.ColumnInfo("v", "INTEGER", False, 0),
]
DDL = (
    "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, n INTEGER, score REAL)",
    "CREATE TABLE events(kind TEXT, v INTEGER)",
    "CREATE TABLE ref(code TEXT PRIMARY KEY, label TEXT)",
)
# The lake's VSchema: ``ref`` is a reference table (its mirror follows shard-0).
LAKE_CONFIG = """
[vschema]
[[vschema.shards]]
id = "shard-0"
[[vschema.shards]]
id = "shard-1"
[vschema.tables.ref]
kind = "reference"
"""


@dataclass
class Stream:
    shard: str
    changes: list[protocol.Change] = field(default_factory=list)
    lsn: int = 0
    txid: int = 0
    rowid: int = 0


class Workload:
    def __init__(self, seed: int, *, start: int = US) -> None:
        self.rnd = random.Random(seed)
        self.clock = start
        self.streams = {s: Stream(s) for s in SHARDS}
        self.users: dict[int, tuple[str, dict]] = {}  # id -> (owner shard, row)
        self.events: dict[tuple[str, int], dict] = {}
        self.ref: dict[str, dict] = {}
        self.commit_times: list[int] = []
        for s in SHARDS:  # both shards create both tables first
            self._txn(
                s,
                [
                    ("schema", "users", USERS_COLS, ["id"]),
                    ("schema", "events", EVENTS_COLS, []),
                    ("schema", "ref", REF_COLS, ["code"]),
                ],
            )

    # ------------------------------------------------------------------ generation

    def _txn(self, shard: str, ops: list[tuple], same_time: bool = False) -> None:
        st = self.streams[shard]
        if not same_time:
            self.clock += self.rnd.choice([1, 7, 250, 1000, 40_000])
        st.txid += 1
        for op in ops:
            st.lsn += 1
            kind, table = op[0], op[1]
            if kind == "schema":
                schema = protocol.TableSchema(action="create", columns=op[2], primary_key=op[3])
                ch = protocol.Change(st.lsn, st.txid, self.clock, table, "schema", schema=schema)
            else:
                _, _, key, before, after = op
                ch = protocol.Change(
                    st.lsn, st.txid, self.clock, table, kind, key=key, before=before, after=after
                )
            st.changes.append(ch)
        self.commit_times.append(self.clock)

    def _user(self, i: int) -> dict:
        r = self.rnd
        return {
            "id": i,
            "name": r.choice(["ann", "bob", "é", "", None, "x" * 30]),
            "n": r.choice([None, 0, 7, -3, 2**40, "not-a-number"]),  # text -> lake overflow
            "score": r.choice([None, 1.5, -0.25, 1e300]),
        }

    def step(self) -> None:
        r = self.rnd
        if r.random() < 0.1:
            self._ref_op()
            return
        shard = r.choice(SHARDS)
        same = r.random() < 0.1  # two transactions (maybe two shards) at the same instant
        ops: list[tuple] = []
        for _ in range(r.choice([1, 1, 1, 2, 3])):
            p = r.random()
            mine = [i for i, (o, _) in self.users.items() if o == shard]
            if p < 0.35 or not mine:
                i = r.randrange(1, 300)
                if i in self.users:
                    continue
                row = self._user(i)
                self.users[i] = (shard, row)
                ops.append(("insert", "users", [i], None, row))
            elif p < 0.6:
                i = r.choice(mine)
                row = {**self._user(i), "id": i}
                ops.append(("update", "users", [i], self.users[i][1], row))
                self.users[i] = (shard, row)
            elif p < 0.7:
                i = r.choice(mine)
                ops.append(("delete", "users", [i], self.users.pop(i)[1], None))
            elif p < 0.78:  # move: delete here now, insert on the other shard later
                i = r.choice(mine)
                row = self.users.pop(i)[1]
                ops.append(("delete", "users", [i], row, None))
                self._pending_move = (i, row)
            else:
                self._event_op(shard, ops)
        if ops:
            self._txn(shard, ops, same_time=same)
        move = getattr(self, "_pending_move", None)
        if move is not None:
            self._pending_move = None
            i, row = move
            other = SHARDS[1 - SHARDS.index(shard)]
            self.users[i] = (other, row)
            self._txn(other, [("insert", "users", [i], None, row)])

    def _ref_op(self) -> None:
        """A write to the reference table: the same change on every shard, one
        transaction per shard, committed one after the other."""
        r = self.rnd
        code = r.choice("abcdefgh")
        if code in self.ref and r.random() < 0.3:
            op = ("delete", "ref", [code], self.ref.pop(code), None)
        else:
            row = {"code": code, "label": r.choice(["x", "y", "z", None])}
            kind = "update" if code in self.ref else "insert"
            op = (kind, "ref", [code], self.ref.get(code), row)
            self.ref[code] = row
        for shard in SHARDS:
            self._txn(shard, [op])

    def _event_op(self, shard: str, ops: list[tuple]) -> None:
        r = self.rnd
        st = self.streams[shard]
        mine = [k for k in self.events if k[0] == shard]
        p = r.random()
        if p < 0.5 or not mine:
            st.rowid += 1
            row = {"kind": r.choice(["a", "b"]), "v": r.randrange(100)}
            self.events[(shard, st.rowid)] = row
            ops.append(("insert", "events", [st.rowid], None, row))
        elif p < 0.8:
            k = r.choice(mine)
            row = {"kind": r.choice(["a", "b"]), "v": r.randrange(100)}
            ops.append(("update", "events", [k[1]], self.events[k], row))
            self.events[k] = row
        else:
            k = r.choice(mine)
            ops.append(("delete", "events", [k[1]], self.events.pop(k), None))

    # ------------------------------------------------------------------ replay

    def replay(
        self, *, until_ts: int | None = None, lsns: dict[str, int] | None = None
    ) -> dict[str, list[tuple]]:
        """The union of the shards' rows after every change with commit_ts <=
        ``until_ts`` (or, per shard, lsn <= ``lsns[shard]``; shards missing
        from ``lsns`` contribute nothing). Rows are SQLite values, sorted;
        events rows carry (shard, rowid) first.

        An LSN cut per shard is not a cut in time: a row that moved from
        shard A to B can be on both (A's delete after A's cut). Like the lake
        mirror, keep one row per key then: the copy whose shard changed it
        last (by commit time)."""
        users: list[tuple] = []
        ref: dict[str, list[tuple]] = {}
        touched: dict[int, tuple[int, str]] = {}  # id -> (commit_ts, shard) of its last change
        events: list[tuple] = []
        for shard, st in self.streams.items():
            if lsns is not None and shard not in lsns:
                continue
            con = sqlite3.connect(":memory:")
            for ddl in DDL:
                con.execute(ddl)
            for ch in st.changes:
                if until_ts is not None and ch.commit_ts > until_ts:
                    break
                if lsns is not None and ch.lsn > lsns[shard]:
                    break
                _apply(con, ch)
                if ch.table == "users" and ch.key:
                    touched[ch.key[0]] = max(touched.get(ch.key[0], (0, "")), (ch.commit_ts, shard))
            users += [(shard, *r) for r in con.execute("SELECT id, name, n, score FROM users")]
            events += [(shard, *row) for row in con.execute("SELECT rowid, kind, v FROM events")]
            ref[shard] = sorted(con.execute("SELECT code, label FROM ref"), key=repr)
            con.close()
        users = [r[1:] for r in users if touched[r[1]][1] == r[0] or _single(users, r[1])]
        return {
            "users": sorted(users, key=repr),
            "events": sorted(events, key=repr),
            # a reference table reads as on the shard that feeds its mirror
            "ref": ref.get(SHARDS[0], next(iter(ref.values()), [])),
        }


def _single(users: list[tuple], ident: int) -> bool:
    return sum(1 for r in users if r[1] == ident) == 1


def _apply(con: sqlite3.Connection, ch: protocol.Change) -> None:
    if ch.op == "schema":
        return
    if ch.table == "users":
        if ch.op == "delete":
            con.execute("DELETE FROM users WHERE id = ?", ch.key)
        else:
            a = ch.after or {}
            con.execute(
                "INSERT OR REPLACE INTO users(id, name, n, score) VALUES (?, ?, ?, ?)",
                (a["id"], a["name"], a["n"], a["score"]),
            )
    elif ch.table == "ref":
        if ch.op == "delete":
            con.execute("DELETE FROM ref WHERE code = ?", ch.key)
        else:
            a = ch.after or {}
            con.execute("INSERT OR REPLACE INTO ref VALUES (?, ?)", (a["code"], a["label"]))
    else:
        if ch.op == "delete":
            con.execute("DELETE FROM events WHERE rowid = ?", ch.key)
        else:
            a = ch.after or {}
            con.execute(
                "INSERT OR REPLACE INTO events(rowid, kind, v) VALUES (?, ?, ?)",
                (ch.key[0], a["kind"], a["v"]),
            )
