"""Where the lake's watermarks live, so a restarted writer knows what it has.

- Per table, per side (mirror, change log): the snapshot summary of the
  table's current snapshot, ``dosql.watermark.<shard> = <lsn>``: every change
  of that shard up to that LSN concerning the table is in that Iceberg table.
  Used to skip what a table already has when a shard resends (exactly once).
- Per shard, globally: the namespace property ``dosql.committed.<shard>``,
  written after a flush has committed both sides of every table it touched:
  every change of the shard up to there is in the lake. This is what
  ``CDCWelcome`` returns and ``Committed`` announces (the shard may purge).
- Per shard, globally: ``dosql.safe_ts.<shard>`` (UTC microseconds): every
  change of the shard committed before that time is in the lake. A held-back
  distributed transaction whose part on that shard is older is not waiting
  for it (see dolake/distributed.py).
- Per shard, globally: ``dosql.incarnation.<shard>``: the incarnation id of the
  shard database the committed watermark belongs to (dosql/shard/identity.py).
  A hello from another incarnation is refused (dolake/identity.py): those LSNs
  are not the ones the watermark counts.
"""

from __future__ import annotations

from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

PREFIX = "dosql.watermark."
COMMITTED = "dosql.committed."
SAFE_TS = "dosql.safe_ts."
INCARNATION = "dosql.incarnation."


def of_table(table: Table) -> dict[str, int]:
    snap = table.current_snapshot()
    if snap is None or snap.summary is None:
        return {}
    props = snap.summary.additional_properties
    return {k[len(PREFIX) :]: int(v) for k, v in props.items() if k.startswith(PREFIX)}


def as_summary(marks: dict[str, int]) -> dict[str, str]:
    """``marks`` as snapshot summary properties (what :func:`of_table` reads back)."""
    return {f"{PREFIX}{s}": str(v) for s, v in sorted(marks.items())}


def load_committed(catalog: Catalog, namespace: str) -> dict[str, int]:
    props = catalog.load_namespace_properties(namespace)
    return {k[len(COMMITTED) :]: int(v) for k, v in props.items() if k.startswith(COMMITTED)}


def load_safe_ts(catalog: Catalog, namespace: str) -> dict[str, int]:
    props = catalog.load_namespace_properties(namespace)
    return {k[len(SAFE_TS) :]: int(v) for k, v in props.items() if k.startswith(SAFE_TS)}


def save_committed(
    catalog: Catalog,
    namespace: str,
    marks: dict[str, int],
    safe_ts: dict[str, int] | None = None,
) -> None:
    """One catalog update: the committed watermarks (and safe commit times) that moved."""
    updates = {f"{COMMITTED}{s}": str(v) for s, v in marks.items()}
    updates.update({f"{SAFE_TS}{s}": str(v) for s, v in (safe_ts or {}).items()})
    if updates:
        catalog.update_namespace_properties(namespace, updates=updates)


def load_incarnations(catalog: Catalog, namespace: str) -> dict[str, str]:
    props = catalog.load_namespace_properties(namespace)
    return {k[len(INCARNATION) :]: v for k, v in props.items() if k.startswith(INCARNATION)}


def save_incarnation(catalog: Catalog, namespace: str, shard: str, incarnation: str) -> None:
    """Record which database of ``shard`` the lake follows (before welcoming it)."""
    catalog.update_namespace_properties(namespace, updates={f"{INCARNATION}{shard}": incarnation})
