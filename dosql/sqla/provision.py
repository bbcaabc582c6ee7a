"""Hooks for SQLAlchemy's compliance suite (``compliance/sqlalchemy``), loaded only by it.

SQLAlchemy's testing plugin imports ``<dialect package>.provision`` to learn
backend specifics; the suite needs to know how temporary tables are spelled
even when the requirements then skip them (the router refuses them).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.testing.provision import temp_table_keyword_args


@temp_table_keyword_args.for_db("dosql")
def _temp_table_keyword_args(cfg: Any, eng: Any) -> dict[str, Any]:
    return {"prefixes": ["TEMPORARY"]}
