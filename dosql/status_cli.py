"""``dosql status [--data-dir DIR] [--json]``: is the cluster up, and what is each part doing?

One command an operator runs beside a cluster (or a script runs in a loop)
instead of curling four ports: it reads every service's HTTP endpoints
(``/health/deep`` and ``/status``; they need no token, but ``--token`` /
``DOSQL_TOKEN`` is sent when given, for a proxy that checks it) and, for a
cluster started by ``dosql up``, the supervisor's ``supervisor.json``
(:mod:`dosql.supervisor`: restarts and last exit per process).

Where it looks: ``--config FILE`` or ``<data dir>/cluster.toml`` (``--data-dir``,
else ``DOSQL_DATA_DIR``, else ``.dosql-data``) lists the router, the shards
and the lake writer; ``--url`` (or ``DOSQL_URL``) names just a router, whose
``/status`` then lists the shards.

Exit status (:mod:`dosql.exitcodes`): 0 everything is ok; 1 degraded (a
shard or the lake writer down or degraded, the router's ``/health/deep`` not
ok, a refused shard, a child in restart backoff); 2 the router cannot be
reached; 3 no cluster to look at (usage).
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dosql import exitcodes
from dosql.discovery import CLUSTER_FILE, DEFAULT_DATA_DIR
from dosql.errors import ConfigurationError
from dosql.supervisor import read_state


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("DOSQL_DATA_DIR") or DEFAULT_DATA_DIR,
        help="the cluster's data directory (default: env DOSQL_DATA_DIR, else .dosql-data)",
    )
    parser.add_argument(
        "--config", help="a cluster config with addresses (default: DIR/cluster.toml)"
    )
    parser.add_argument("--url", help="just this router (default: env DOSQL_URL, else the config)")
    parser.add_argument(
        "--token", default=os.environ.get("DOSQL_TOKEN"), help="bearer token (env DOSQL_TOKEN)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="per request, in seconds (default 5)"
    )


def run(args: argparse.Namespace) -> int:
    report = gather(
        data_dir=Path(args.data_dir),
        config=args.config,
        url=args.url or os.environ.get("DOSQL_URL"),
        token=args.token,
        timeout=args.timeout,
    )
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        print(format_report(report))
    return exit_status(report)


# ---------------------------------------------------------------------- gathering


def http_base(url: str) -> str:
    """``dosql://h:p`` / ``ws://h:p`` / ``dolake://h:p`` -> ``http://h:p`` (wss -> https)."""
    scheme, _, rest = url.partition("://")
    secure = scheme in ("wss", "https", "dosqls")
    return ("https://" if secure else "http://") + rest.split("/", 1)[0]


def get_json(url: str, path: str, token: str | None, timeout: float) -> tuple[int, Any]:
    """(HTTP status, JSON body); raises OSError when nothing answers."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(http_base(url) + path, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read() or b"{}")
    except urllib.error.HTTPError as exc:  # 503 from /health/deep still carries the body
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}


def probe(url: str, token: str | None, timeout: float) -> dict[str, Any]:
    """A service's ``/health/deep`` and ``/status``, or why it cannot be reached."""
    out: dict[str, Any] = {"url": url}
    try:
        _, deep = get_json(url, "/health/deep", token, timeout)
        _, status = get_json(url, "/status", token, timeout)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return {**out, "up": False, "health": "down", "error": str(reason)}
    return {**out, "up": True, "health": deep.get("status", "?"), "deep": deep, "status": status}


def _addresses(
    data_dir: Path, config: str | None, url: str | None
) -> tuple[str | None, dict[str, str], str | None]:
    """(router URL, shard id -> URL, lake URL) from the config or cluster file."""
    path = Path(config) if config else data_dir / CLUSTER_FILE
    if not path.is_file():
        if url:
            return url, {}, None
        raise ConfigurationError(
            f"no cluster to look at: {path} does not exist (start one with `dosql up`, "
            "or pass --data-dir, --config or --url)",
            code="MISSING_CONFIG",
        )
    from dosql import config as config_mod

    cfg = config_mod.load(path)
    shards: dict[str, str] = {}
    try:
        vs = cfg.load_vschema()
        shards = {s.id: s.address for s in vs.shards if getattr(s, "address", None)}
    except Exception:  # a config without an inline VSchema: the router's /status lists them
        shards = {}
    return url or cfg.router.url or None, shards, cfg.lake.url or None


def gather(
    *,
    data_dir: Path,
    config: str | None = None,
    url: str | None = None,
    token: str | None = None,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """Everything ``dosql status`` prints, as one JSON-able dict."""
    router_url, shard_urls, lake_url = _addresses(data_dir, config, url)
    router = probe(router_url, token, timeout) if router_url else {"up": False, "health": "down"}
    if not shard_urls and router.get("up"):
        for s in router["status"].get("shards", []):
            if s.get("address"):
                shard_urls[s["id"]] = s["address"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {sid: pool.submit(probe, u, token, timeout) for sid, u in shard_urls.items()}
        lake_future = pool.submit(probe, lake_url, token, timeout) if lake_url else None
        shards = {sid: f.result() for sid, f in futures.items()}
        lake = lake_future.result() if lake_future else None
    supervisor = read_state(data_dir)
    report: dict[str, Any] = {
        "router": _router_summary(router),
        "shards": {sid: _shard_summary(p) for sid, p in shards.items()},
        "lake": _lake_summary(lake, shards) if lake else None,
        "supervisor": supervisor,
    }
    report["status"] = overall(report)
    return report


def _router_summary(p: dict[str, Any]) -> dict[str, Any]:
    out = {k: p.get(k) for k in ("url", "up", "health", "error") if p.get(k) is not None}
    deep = p.get("deep") or {}
    if deep:
        out["shards"] = {sid: v.get("status") for sid, v in (deep.get("shards") or {}).items()}
        if "lake" in deep:
            out["lake"] = deep["lake"].get("status")
        if deep.get("blocked_tables"):
            out["blocked_tables"] = deep["blocked_tables"]
    status = p.get("status") or {}
    if status:
        out["transactions"] = status.get("transactions")
    return out


def _shard_summary(p: dict[str, Any]) -> dict[str, Any]:
    out = {k: p.get(k) for k in ("url", "up", "health", "error") if p.get(k) is not None}
    status = p.get("status") or {}
    if status:
        out["current_lsn"] = status.get("current_lsn")
        out["prepared_transactions"] = len(status.get("prepared_transactions") or [])
        out["open_transactions"] = status.get("open_transactions")
        ident = status.get("identity") or {}
        out["incarnation"] = ident.get("incarnation")
        storage = status.get("storage") or {}
        if storage.get("state") not in (None, "ok"):
            out["storage"] = storage.get("state")
    return out


def _lake_summary(p: dict[str, Any], shards: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {k: p.get(k) for k in ("url", "up", "health", "error") if p.get(k) is not None}
    status = p.get("status") or {}
    sources: dict[str, Any] = {}
    for sid, src in (status.get("sources") or {}).items():
        current = ((shards.get(sid) or {}).get("status") or {}).get("current_lsn")
        committed = src.get("committed_lsn")
        sources[sid] = {
            "connected": src.get("connected"),
            "committed_lsn": committed,
            "lag": current - committed
            if isinstance(current, int) and committed is not None
            else None,
            "refused": src.get("refused"),
        }
    if p.get("up"):
        out["sources"] = sources
        refused = (p.get("deep") or {}).get("refused_shards") or {}
        out["refused_shards"] = sorted(refused)
    return out


def overall(report: dict[str, Any]) -> str:
    """``ok``, ``degraded`` (something down or unhealthy) or ``down`` (no router)."""
    if not report["router"].get("up"):
        return "down"
    parts = [report["router"], *report["shards"].values()]
    if report["lake"] is not None:
        parts.append(report["lake"])
    if any(p.get("health") != "ok" for p in parts):
        return "degraded"
    sup = report.get("supervisor") or {}
    if not sup.get("stale") and any(
        c.get("state") != "running" for c in (sup.get("children") or {}).values()
    ):
        return "degraded"
    return "ok"


def exit_status(report: dict[str, Any]) -> int:
    return {
        "ok": exitcodes.OK,
        "degraded": exitcodes.SQL_ERROR,
        "down": exitcodes.CONNECTION_ERROR,
    }[report["status"]]


# ---------------------------------------------------------------------- printing


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return lines


def _s(value: Any) -> str:
    return "-" if value is None else str(value)


def format_report(report: dict[str, Any]) -> str:
    """The human-readable form: one line per process, then the supervisor's view."""
    sup = report.get("supervisor") or {}
    children = sup.get("children") or {}

    def restarts(name: str) -> str:
        c = children.get(name)
        if not c:
            return "-"
        text = str(c.get("restarts", 0))
        if c.get("state") != "running":
            wait = c.get("next_restart_in_s")
            text += f" ({c.get('state')}" + (f", next in {wait}s)" if wait is not None else ")")
        return text

    rows: list[list[str]] = []
    r = report["router"]
    detail = r.get("error") or ""
    if r.get("up"):
        bad = [f"{sid}={st}" for sid, st in (r.get("shards") or {}).items() if st != "ok"]
        if r.get("lake") not in (None, "ok"):
            bad.append(f"lake={r['lake']}")
        detail = "deep: " + (", ".join(bad) if bad else "all ok")
    rows.append(
        ["router", _s(r.get("url")), _up(r), _s(r.get("health")), restarts("router"), detail]
    )
    for sid, s in report["shards"].items():
        detail = s.get("error") or (
            f"lsn {_s(s.get('current_lsn'))}, prepared {_s(s.get('prepared_transactions'))}, "
            f"incarnation {_s(s.get('incarnation'))[:8]}"
            + (f", storage {s['storage']}" if s.get("storage") else "")
        )
        rows.append([sid, _s(s.get("url")), _up(s), _s(s.get("health")), restarts(sid), detail])
    lake = report.get("lake")
    if lake is not None:
        detail = lake.get("error") or ""
        if lake.get("up"):
            parts = [
                f"{sid} lsn {_s(v['committed_lsn'])} lag {_s(v['lag'])}"
                + ("" if v.get("connected") else " (not connected)")
                for sid, v in (lake.get("sources") or {}).items()
            ]
            if lake.get("refused_shards"):
                parts.append("REFUSED: " + ", ".join(lake["refused_shards"]))
            detail = "committed: " + ("; ".join(parts) if parts else "nothing yet")
        rows.append(
            [
                "lake",
                _s(lake.get("url")),
                _up(lake),
                _s(lake.get("health")),
                restarts("lake"),
                detail,
            ]
        )
    lines = _table(["PROCESS", "ADDRESS", "UP", "HEALTH", "RESTARTS", "DETAIL"], rows)
    lines.append("")
    if sup:
        stale = " (stale: its `dosql up` is gone)" if sup.get("stale") else ""
        lines.append(f"supervisor: pid {sup.get('pid')}, updated {sup.get('updated_at')}{stale}")
        for name, c in children.items():
            last = c.get("last_exit")
            if last:
                how = f"signal {last['signal']}" if "signal" in last else f"code {last.get('code')}"
                lines.append(f"  {name}: last exit {how} at {last.get('at')}")
    else:
        lines.append("supervisor: none (not started by `dosql up`, or --no-supervise)")
    lines.append(f"status: {report['status']}")
    return "\n".join(lines)


def _up(p: dict[str, Any]) -> str:
    return "up" if p.get("up") else "DOWN"
