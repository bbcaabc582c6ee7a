"""Every service's ``/metrics`` follows the Prometheus conventions and matches docs/metrics.md.

One real cluster (lake writer, two shards, router) is scraped before any client
traffic (labelled counters must already have their series) and after a little
(the guide-name aliases must agree with the series they rename). The table in
docs/metrics.md is checked against what is exposed in both directions, so the
document cannot rot; the guide's names listed there as aliases are the only
names allowed to break the conventions.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from dosql.cluster import LocalCluster
from tests.router.client import Client
from tests.router.conftest import quickstart_vschema, write_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
SERVICES = ("router", "shard", "lake")
BASE_UNITS = ("_seconds", "_bytes")  # what a histogram may measure here
TICKS = re.compile(r"`([^`]+)`")


@dataclass(frozen=True)
class Row:
    """One line of the doc table."""

    service: str
    name: str
    type: str
    labels: frozenset[str]
    alias: str | None


def doc_rows() -> list[Row]:
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or cells[0] not in SERVICES:
            continue
        service, name, kind, labels, _unit, _meaning, alias = cells
        aliases = TICKS.findall(alias)
        rows.append(
            Row(
                service,
                TICKS.findall(name)[0],
                kind,
                frozenset(TICKS.findall(labels)),
                aliases[0] if aliases else None,
            )
        )
    return rows


ROWS = doc_rows()


def exposed_name(fam: Metric) -> str:
    """The name operators type: the parser strips a counter's ``_total``."""
    return fam.name + "_total" if fam.type == "counter" else fam.name


def scrape(url: str) -> dict[str, Metric]:
    http = "http://" + url.split("://", 1)[1] + "/metrics"
    with urllib.request.urlopen(http, timeout=10) as resp:
        text = resp.read().decode()
    return {exposed_name(f): f for f in text_string_to_metric_families(text)}


def scrape_all(cluster: LocalCluster) -> dict[str, list[dict[str, Metric]]]:
    assert cluster.url and cluster.lake_url
    return {
        "router": [scrape(cluster.url)],
        "shard": [scrape(u) for u in cluster.shard_urls.values()],
        "lake": [scrape(cluster.lake_url)],
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    tmp = tmp_path_factory.mktemp("metric-conventions")
    cfg = write_config(tmp / "dosql.toml", quickstart_vschema(2))
    with LocalCluster(cfg, tmp / "data", lake=True) as running:
        yield running


@pytest.fixture(scope="module")
def idle(cluster: LocalCluster) -> dict[str, list[dict[str, Metric]]]:
    """The scrapes before any client statement."""
    return scrape_all(cluster)


@pytest.fixture(scope="module")
def busy(cluster: LocalCluster, idle: dict) -> dict[str, list[dict[str, Metric]]]:
    """The scrapes after a few statements (taken after ``idle``)."""
    assert cluster.url
    with Client(cluster.url) as c:
        c.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, tenant_id INTEGER, name TEXT)")
        for i in range(20):
            c.execute("INSERT INTO users VALUES (?, ?, ?)", [i, i, f"u{i}"])
        c.execute("SELECT count(*) FROM users")
        with pytest.raises(Exception):  # noqa: B017, PT011 - any error: it is counted
            c.execute("SELEC nonsense")
    return scrape_all(cluster)


def aliases(service: str) -> set[str]:
    return {r.alias for r in ROWS if r.service == service and r.alias}


@pytest.mark.parametrize("service", SERVICES)
def test_names_follow_the_prometheus_conventions(idle: dict, service: str) -> None:
    allowed = aliases(service)
    for families in idle[service]:
        for name, fam in families.items():
            if name in allowed:
                continue
            assert not name.endswith("_ms"), f"{name}: durations are in seconds"
            assert "p99" not in name, f"{name}: quantile over the histogram instead"
            if fam.type == "histogram":
                assert name.endswith(BASE_UNITS), f"{name}: a histogram names its base unit"
            if fam.type == "counter":
                assert all(s.name == name for s in fam.samples), f"{name}: counters end in _total"
            if fam.type == "gauge":
                assert not name.endswith(("_count", "_total", "_created")), name


@pytest.mark.parametrize("service", SERVICES)
def test_the_doc_table_lists_exactly_what_is_exposed(idle: dict, service: str) -> None:
    rows = [r for r in ROWS if r.service == service]
    documented = {r.name for r in rows} | aliases(service)
    for families in idle[service]:
        assert set(families) == documented, (
            f"undocumented: {sorted(set(families) - documented)}; "
            f"documented, not exposed: {sorted(documented - set(families))}"
        )
        for row in rows:
            assert families[row.name].type == row.type, row.name


@pytest.mark.parametrize("service", SERVICES)
def test_labels_are_the_documented_ones(busy: dict, service: str) -> None:
    for row in (r for r in ROWS if r.service == service):
        for families in busy[service]:
            for name in filter(None, (row.name, row.alias)):
                for sample in families[name].samples:
                    assert set(sample.labels) - {"le"} == row.labels, (name, sample)


@pytest.mark.parametrize("service", SERVICES)
def test_labelled_counters_have_series_before_any_traffic(idle: dict, service: str) -> None:
    counters = [r for r in ROWS if r.service == service and r.type == "counter" and r.labels]
    assert counters
    for row in counters:
        for families in idle[service]:
            samples = families[row.name].samples
            assert samples, f"{row.name} has no series until its first increment"


def test_known_label_values_start_at_zero(idle: dict) -> None:
    (router,) = idle["router"]
    (lake,) = idle["lake"]
    errors = {s.labels["code"]: s.value for s in router["dosql_errors_total"].samples}
    assert errors["SYNTAX_ERROR"] == 0 and errors["TIMEOUT"] == 0
    kinds = {s.labels["kind"] for s in router["dosql_queries_total"].samples}
    assert {"read", "write", "ddl", "tx"} <= kinds
    reasons = {s.labels["reason"] for s in lake["dolake_batch_nacks_total"].samples}
    assert reasons == {"buffer_full", "lsn_gap", "invalid", "unknown_source"}
    for shard in idle["shard"]:
        paths = {s.labels["path"]: s.value for s in shard["dosql_autocommit_reads_total"].samples}
        assert paths == {"inline": 0.0, "thread": 0.0}


def _values(fam: Metric, suffix: str) -> dict[tuple, float]:
    return {
        tuple(sorted(s.labels.items())): s.value for s in fam.samples if s.name == fam.name + suffix
    }


def test_millisecond_aliases_are_the_seconds_histograms_scaled(busy: dict) -> None:
    (router,) = busy["router"]
    for families in [router, *busy["shard"]]:
        seconds = families["dosql_query_duration_seconds"]
        ms = families["dosql_query_duration_ms"]
        assert _values(ms, "_count") == _values(seconds, "_count") != {}
        for key, total in _values(seconds, "_sum").items():
            assert _values(ms, "_sum")[key] == pytest.approx(total * 1000)
        bounds = {float(s.labels["le"]) for s in ms.samples if s.name.endswith("_bucket")}
        assert {0.5, 100.0, 30000.0} <= bounds  # the guide's thresholds read in ms
    errors = _values(router["dosql_errors_total"], "_total")
    assert sum(errors.values()) >= 1, "the failed statement is counted under its code"


def test_renamed_gauges_keep_the_guide_names_with_the_same_value(busy: dict) -> None:
    (router,) = busy["router"]
    (lake,) = busy["lake"]
    pairs = [(router, "dosql_connections", "dosql_connection_count")]
    for shard in busy["shard"]:
        pairs += [
            (shard, "dosql_connections", "dosql_connection_count"),
            (shard, "dosql_wal_segments", "dosql_wal_segment_count"),
        ]
    pairs.append((lake, "dolake_buffer_events", "dolake_buffer_event_count"))
    for families, name, guide in pairs:
        assert _values(families[guide], "") == _values(families[name], ""), guide
    p99 = {s.labels["shard"] for s in router["shard_latency_p99_ms"].samples}
    durations = _values(router["dosql_shard_request_duration_seconds"], "_count")
    assert p99 == {"shard-0", "shard-1"} and sum(durations.values()) > 0
