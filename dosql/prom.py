"""Prometheus naming conventions shared by every service's ``/metrics``.

Metrics are recorded in base units (``_seconds``, ``_bytes``; counters get
``_total`` from prometheus_client), as real histograms. The operations guide
this project started from names a few metrics in milliseconds or with a
``_count`` suffix, and its alert thresholds are written against those names;
:class:`Alias` exposes such a guide name beside the conventional one, computed
from the same series at scrape time (one observation, two names, no drift).
Every metric and alias is listed in ``docs/metrics.md``.

``_created`` series are switched off: in the text format they appear as extra
gauge families (``foo_created``) that nobody alerts on and that double the
series count.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

prometheus_client.disable_created_metrics()

MS_PER_SECOND = 1000.0

# Request-scale durations (0.5 ms .. 30 s), in seconds.
REQUEST_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# Background-job durations (10 ms .. 60 s), in seconds.
JOB_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Alias:
    """Re-expose ``source`` under the operations guide's ``name``, values times ``scale``.

    For a histogram the bucket bounds (``le``) and ``_sum`` are scaled and
    ``_count`` is not, so ``histogram_quantile`` over the alias answers in the
    guide's unit. Registered on ``registry`` like any collector.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        source: Any,
        name: str,
        *,
        scale: float = 1.0,
        documentation: str = "",
    ) -> None:
        self.source = source
        self.name = name
        self.scale = scale
        self.documentation = documentation
        registry.register(self)

    def describe(self) -> list[Metric]:
        """Names only, so the registry refuses a clash with a real metric."""
        return [Metric(self.name, self.documentation, fam.type) for fam in self.source.describe()]

    def collect(self) -> Iterator[Metric]:
        for fam in self.source.collect():
            out = Metric(self.name, self.documentation or fam.documentation, fam.type)
            for sample in fam.samples:
                suffix = sample.name[len(fam.name) :]
                labels, value = self._scaled(suffix, dict(sample.labels), sample.value)
                out.add_sample(self.name + suffix, labels, value, sample.timestamp)
            yield out

    def _scaled(self, suffix: str, labels: dict[str, str], value: float) -> tuple[dict, float]:
        if suffix == "_bucket":
            labels["le"] = floatToGoString(_tidy(float(labels["le"]) * self.scale))
            return labels, value
        if suffix in ("", "_sum"):
            return labels, _tidy(value * self.scale)
        return labels, value  # _count, _total: a number of events, not a unit


def _tidy(value: float) -> float:
    """0.0025 * 1000 is 2.5, not 2.4999999999999996: bucket bounds stay readable."""
    return float(f"{value:.12g}")


def ms_alias(registry: CollectorRegistry, source: Any, name: str, documentation: str) -> Alias:
    """The guide's millisecond name for a metric recorded in seconds."""
    return Alias(registry, source, name, scale=MS_PER_SECOND, documentation=documentation)


def init_labels(metric: Any, values: Iterable[str]) -> None:
    """Create the child for each known label value, so its series exists (at 0)
    before the first increment and ``rate()`` / ``increase()`` see the first one."""
    for value in values:
        metric.labels(value)
