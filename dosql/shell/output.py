"""How ``dosql shell`` prints a result: ``table`` (for people), ``json``, ``csv``.

The table and JSON forms are ``dosql sql``'s (:mod:`dosql.sql_cli`), so a
script that parses one parses the other. CSV has a header row and no trailer;
a statement without rows prints nothing in CSV (there is no data to print).
BLOBs print as ``X'hex'`` in table and CSV, ``{"hex": …}`` in JSON.
"""

from __future__ import annotations

import csv
import json
import sys
from typing import Any, TextIO

from dosql.sql_cli import cell, format_table, json_value, result_json

MODES = ("table", "json", "csv")


def render(
    mode: str,
    columns: list[str],
    rows: list[tuple[Any, ...]],
    rowcount: int,
    lastrowid: int | None,
    out: TextIO | None = None,
) -> None:
    """Write one statement's result to ``out`` (stdout) in ``mode``."""
    out = out or sys.stdout
    if mode == "json":
        result = result_json(columns, rows, rowcount, lastrowid)
        out.write(json.dumps(result, default=json_value) + "\n")
    elif mode == "csv":
        if columns:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows([["" if v is None else cell(v) for v in row] for row in rows])
    else:
        out.write(format_table(columns, rows, rowcount) + "\n")
    out.flush()
