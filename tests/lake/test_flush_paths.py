"""The flush's fast paths give exactly what the slow paths they replace give.

- ``TableLayout.typed_columns`` (column-wise) == the former row-by-row
  conversion (kept here as the reference);
- ``Writer._key_function`` == ``_norm_key(layout, layout.key_of(...))``;
- ``mor.write_data_files`` (one sort + slices, rows returned) == pyiceberg's
  ``_dataframe_to_data_files`` (a filter per partition), and each file holds
  exactly the rows returned for it, in order;
- ``mor.Transaction.table_metadata`` (derived once per staged state) ==
  pyiceberg's (derived on every read).
"""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyiceberg.io.pyarrow import _dataframe_to_data_files, schema_to_pyarrow
from pyiceberg.table import Transaction

from dolake import mor
from dolake.buffer import Entry
from dolake.catalog import open_catalog
from dolake.schema import OVERFLOW, SHARD_COL, NoFit, TableLayout, raw_tag
from dolake.writer import COMMIT_TS_COL, Writer
from dosql import config as config_mod
from dosql import protocol

DECLS = ["INTEGER", "REAL", "TEXT", "BLOB", "BOOLEAN", "DATE", "TIMESTAMP", "DECIMAL(10,2)", ""]
NAMES = [f"c{i}" for i in range(len(DECLS))]

sqlite_values = st.one_of(
    st.none(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["2024-01-31", "2024-02-30", "2024-01-31 10:11:12", "1.25", "abc"]),
    st.binary(max_size=6),
)
images = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from([*NAMES, "unknown", "other"]), sqlite_values, max_size=11),
)


def _layout(primary_key: list[str]) -> TableLayout:
    layout = TableLayout("t")
    cols = [protocol.ColumnInfo(n, d, False, 0) for n, d in zip(NAMES, DECLS, strict=True)]
    layout.apply(protocol.TableSchema(action="create", columns=cols, primary_key=primary_key))
    layout.columns[-1].dropped = True  # dropped columns are still written (as NULL)
    return layout


def _typed_row(layout: TableLayout, image: dict | None) -> tuple[dict, str | None]:
    """The row-by-row conversion ``typed_columns`` replaced: the reference."""
    row: dict = {}
    overflow: dict = {}
    image = image or {}
    for col in layout.columns:
        v = image.get(col.name)
        if v is None:
            row[col.name] = None
            continue
        try:
            row[col.name] = col.convert(v)
        except NoFit:
            row[col.name] = None
            overflow[col.name] = raw_tag(v)
    for name, v in image.items():  # columns the lake does not know yet
        if layout.column(name) is None and v is not None:
            overflow[name] = raw_tag(v)
    return row, (json.dumps(overflow, sort_keys=True) if overflow else None)


@settings(max_examples=300, deadline=None)
@given(st.lists(images, max_size=25))
def test_typed_columns_equals_row_by_row(imgs):
    layout = _layout(["c0"])
    columns, overflow = layout.typed_columns(imgs)
    rows = [_typed_row(layout, image) for image in imgs]
    assert overflow == [o for _r, o in rows]
    assert set(columns) == set(NAMES)
    for name in NAMES:
        assert columns[name] == [r[name] for r, _o in rows]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([["c0"], ["c2"], ["c0", "c2"], []]),
    st.lists(st.tuples(st.sampled_from(["insert", "delete"]), images), max_size=20),
)
def test_key_function_equals_norm_key_of_key_of(primary_key, changes):
    layout = _layout(primary_key)
    key = Writer._key_function(layout)
    for i, (op, image) in enumerate(changes):
        ch = protocol.Change(i + 1, 1, 0, "t", op, key=[i], after=image)
        assert key(ch, image) == Writer._norm_key(layout, layout.key_of(ch, image))


def _mirror(tmp_path: Path, decl: str) -> Writer:
    writer = Writer(open_catalog(config_mod.default().lake, tmp_path), index_dir=tmp_path / "i")
    cols = [protocol.ColumnInfo("id", decl, True, 1), protocol.ColumnInfo("v", "TEXT", False, 0)]
    schema = protocol.TableSchema(action="create", columns=cols, primary_key=["id"])
    ch = protocol.Change(1, 1, 0, "t", "schema", schema=schema)
    writer.flush_table("t", [Entry("shard-0", ch, 64)], {"shard-0": 1})
    return writer


def _rows(decl: str, n: int, rnd: random.Random) -> list:
    if decl == "INTEGER":
        return rnd.sample(range(-(10**12), 10**12), n)
    if decl == "TEXT":
        return [f"k{rnd.randrange(10**9)}" for _ in range(n)]
    return [rnd.random() * 1000 for _ in range(n)]  # REAL: not bucketable -> unpartitioned


def _by_partition(pairs) -> dict:
    out: dict = {}
    for data_file, rows in pairs:
        key = tuple(data_file.partition)
        out.setdefault(key, []).extend(rows.to_pylist())
    return {k: sorted(v, key=lambda r: repr(r["id"])) for k, v in out.items()}


@pytest.mark.parametrize("decl", ["INTEGER", "TEXT", "REAL"])
def test_write_data_files_equals_pyiceberg(tmp_path: Path, decl: str):
    writer = _mirror(tmp_path, decl)
    table = writer.tables["t"].mirror
    assert table is not None
    rnd = random.Random(7)
    keys = _rows(decl, 3000, rnd)
    df = pa.Table.from_pydict(
        {
            "id": keys,
            "v": [f"v{i}" for i in range(len(keys))],
            SHARD_COL: ["shard-0"] * len(keys),
            COMMIT_TS_COL: list(range(len(keys))),
            OVERFLOW: [None] * len(keys),
        },
        schema=schema_to_pyarrow(table.schema()),
    ).sort_by([("id", "ascending")])
    meta = table.metadata
    ours = mor.write_data_files(meta, table.io, df, uuid.uuid4())
    for data_file, rows in ours:  # each file holds exactly its rows, in order
        with table.io.new_input(data_file.file_path).open() as f:
            written = pq.read_table(f).select(rows.column_names)
        assert written.to_pylist() == rows.to_pylist()
        assert data_file.record_count == len(rows)
        ids = rows["id"].to_pylist()
        assert ids == sorted(ids)  # the input order is kept within a file
    theirs = [
        (f, _read(table, f))
        for f in _dataframe_to_data_files(meta, df, table.io, uuid.uuid4(), None)
    ]
    assert _by_partition(ours) == _by_partition(theirs)
    assert sum(len(r) for _f, r in ours) == len(df)
    if decl == "REAL":
        assert len(ours) == 1 and len(tuple(ours[0][0].partition)) == 0


def _read(table, data_file) -> pa.Table:
    with table.io.new_input(data_file.file_path).open() as f:
        return pq.read_table(f)


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(min_value=0, max_value=3))
def test_transaction_metadata_equals_pyiceberg(tmp_path: Path, appends: int):
    writer = _mirror(tmp_path / uuid.uuid4().hex, "INTEGER")
    table = writer.tables["t"].changelog
    assert table is not None
    ours, theirs = mor.Transaction(table), Transaction(table)
    assert ours.table_metadata.model_dump() == theirs.table_metadata.model_dump()
    for i in range(appends):
        for tx in (ours, theirs):
            tx.set_properties({"x": str(i)})
        a, b = (_dump(tx.table_metadata) for tx in (ours, theirs))
        assert a == b and ours.table_metadata.properties["x"] == str(i)
    assert ours.table_metadata is ours.table_metadata  # derived once per staged state


def _dump(meta) -> dict:
    """The metadata but its update time (now, when derived with staged updates)."""
    return meta.model_copy(update={"last_updated_ms": 0}).model_dump()
