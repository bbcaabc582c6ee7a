"""Open the lake's pyiceberg catalog from the deployment config.

Default: a plain SQL catalog on SQLite (``<data_dir>/lake/catalog.db``) with
the warehouse directory ``<data_dir>/lake/warehouse``, catalog name
``dosql``, so Spark (Iceberg JDBC catalog), DuckDB (``iceberg_scan`` of a
metadata file) and pyiceberg can all open it. ``lake.catalog_uri`` and
``lake.warehouse`` point elsewhere (Postgres SQL catalog, ``s3://`` warehouse,
...); ``lake.catalog_properties`` are passed to pyiceberg unchanged (``type =
"rest"``, ``s3.endpoint``, credentials ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyiceberg.catalog import Catalog, load_catalog

from dosql.config import LakeConfig


def catalog_properties(lake: LakeConfig, data_dir: str | Path) -> dict[str, str]:
    base = Path(data_dir).resolve() / "lake"
    props: dict[str, str] = {}
    props["uri"] = lake.catalog_uri or f"sqlite:///{base / 'catalog.db'}"
    warehouse = lake.warehouse or str(base / "warehouse")
    props["warehouse"] = warehouse if "://" in warehouse else Path(warehouse).resolve().as_uri()
    props.update(lake.catalog_properties)
    if "type" not in props and props["uri"].startswith(("sqlite:", "postgresql", "mysql")):
        props["type"] = "sql"
    if props["uri"].startswith("sqlite:///"):
        Path(props["uri"][len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    if props["warehouse"].startswith("file://"):
        Path(props["warehouse"][len("file://") :]).mkdir(parents=True, exist_ok=True)
    return props


def open_catalog(lake: LakeConfig, data_dir: str | Path, **extra: Any) -> Catalog:
    props = catalog_properties(lake, data_dir)
    props.update(extra)
    return load_catalog(lake.catalog_name, **props)
