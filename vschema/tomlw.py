"""Writing TOML: tomli-w, with ``None`` values left out (TOML has no null).

The standard library reads TOML but cannot write it; the cluster launcher
writes a config with the VSchema inline, and VSchemas can be saved. Optional
fields are ``None`` in our dicts, so they are dropped before writing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tomli_w


def _without_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_without_none(v) for v in value if v is not None]
    return value


def dumps(data: Mapping[str, Any]) -> str:
    """TOML text that ``tomllib.loads`` reads back as ``data`` minus its ``None`` values."""
    return tomli_w.dumps(_without_none(data))
