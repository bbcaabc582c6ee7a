"""A small TOML writer for the plain data VSchemas and configs are made of.

The standard library reads TOML (``tomllib``) but cannot write it, and the
cluster launcher must write a config with the VSchema inline. This covers
what those documents hold: tables, arrays, strings, integers, floats, booleans
and dates; ``None`` values are left out (TOML has no null). Top-level and
nested mappings become ``[section]`` headers, top-level arrays of mappings
become ``[[section]]`` entries, anything else is written inline. ``tomllib.loads``
of the output gives back the input.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"TOML keys must be strings, not {key!r}")
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes; DEL must be escaped too.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _is_table_array(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str | bytes)
        and bool(value)
        and all(isinstance(item, Mapping) for item in value)
    )


def inline(value: Any) -> str:
    """One TOML value, written inline."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, Mapping):
        items = [f"{_key(k)} = {inline(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        return "[" + ", ".join(inline(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML: {value!r}")


def _assign(key: str, value: Any) -> str:
    """``key = value``; arrays of tables get one element per line, for readability."""
    if _is_table_array(value) and len(value) > 1:
        body = "".join(f"  {inline(item)},\n" for item in value)
        return f"{_key(key)} = [\n{body}]"
    return f"{_key(key)} = {inline(value)}"


def _blank(out: list[str]) -> None:
    if out and out[-1] != "":
        out.append("")


def _section(path: list[str], data: Mapping[str, Any], out: list[str], header: str | None) -> None:
    nested: list[tuple[str, Any]] = []
    lines = []
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, Mapping) or (not path and _is_table_array(value)):
            nested.append((key, value))
        else:
            lines.append(_assign(key, value))
    if header is not None and (lines or not nested):
        out.append(header)
    out.extend(lines)
    for key, value in nested:
        sub = [*path, _key(key)]
        if isinstance(value, Mapping):
            _blank(out)
            _section(sub, value, out, "[" + ".".join(sub) + "]")
        else:
            for item in value:
                _blank(out)
                out.append("[[" + ".".join(sub) + "]]")
                out.extend(f"{_key(k)} = {inline(v)}" for k, v in item.items() if v is not None)


def dumps(data: Mapping[str, Any]) -> str:
    """A TOML document for ``data``."""
    out: list[str] = []
    _section([], data, out, None)
    return "\n".join(out) + "\n"
