"""Measurement plumbing: repeated runs, robust statistics, JSON results.

A benchmark is a function ``(ctx) -> Report``. It measures our system and its
baseline in the same process and moment, so a ratio compares like with like on
this machine; absolute figures are printed too but the ratio is what travels.
Each figure is the median over at least ``runs`` repetitions after a warm-up,
with min/max as the spread.
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"


@dataclass
class Figure:
    """One measured quantity over several runs."""

    name: str
    unit: str
    samples: list[float]
    higher_is_better: bool = False

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> tuple[float, float]:
        return (min(self.samples), max(self.samples))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "median": self.median,
            "min": self.spread[0],
            "max": self.spread[1],
            "runs": len(self.samples),
            "higher_is_better": self.higher_is_better,
        }


@dataclass
class Report:
    name: str
    figures: list[Figure] = field(default_factory=list)
    baselines: list[Figure] = field(default_factory=list)
    # (label, ours figure name, baseline figure name): ratio = ours / baseline.
    ratios: list[tuple[str, str, str]] = field(default_factory=list)
    goals: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def figure(self, name: str) -> Figure:
        for fig in self.figures + self.baselines:
            if fig.name == name:
                return fig
        raise KeyError(name)

    def ratio_values(self) -> dict[str, float]:
        out = {}
        for label, ours, base in self.ratios:
            b = self.figure(base).median
            out[label] = self.figure(ours).median / b if b else float("inf")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "params": self.params,
            "figures": [f.to_json() for f in self.figures],
            "baselines": [f.to_json() for f in self.baselines],
            "ratios": self.ratio_values(),
            "goals": self.goals,
            "notes": self.notes,
            "machine": machine_info(),
            "git_commit": git_commit(),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


@dataclass
class Context:
    quick: bool
    runs: int
    workdir: Path


def repeat(runs: int, fn: Callable[[], float], warmup: int = 1) -> list[float]:
    """Call ``fn`` (which returns one measurement) warmup + runs times; keep the runs."""
    for _ in range(warmup):
        fn()
    return [fn() for _ in range(runs)]


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * pct / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def machine_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
        "processor": platform.processor() or platform.machine(),
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def write(report: Report, results_dir: Path = RESULTS_DIR) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{report.name}.json"
    path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return path


def render(report: Report) -> str:
    """A plain-text table: figure, median, spread, unit; then ratios and goals."""
    lines = [f"== {report.name} " + " ".join(f"{k}={v}" for k, v in report.params.items())]
    rows = [("ours", f) for f in report.figures] + [("baseline", f) for f in report.baselines]
    width = max((len(f.name) for _, f in rows), default=10)
    for kind, fig in rows:
        lo, hi = fig.spread
        lines.append(
            f"  {kind:<8} {fig.name:<{width}}  {fig.median:>12.3f} {fig.unit:<8}"
            f" [{lo:.3f} .. {hi:.3f}] n={len(fig.samples)}"
        )
    for label, value in report.ratio_values().items():
        lines.append(f"  ratio    {label:<{width}}  {value:>12.3f}x")
    for label, goal in report.goals.items():
        lines.append(f"  goal     {label}: {goal}")
    lines.extend(f"  note     {n}" for n in report.notes)
    return "\n".join(lines)
