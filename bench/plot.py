"""One PNG of the latest results: each benchmark's ratios against its baseline."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(results_dir: Path) -> Path | None:
    """Horizontal bars on a log scale: ratios span 0.01x to 1000x, 1x is the baseline."""
    reports = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]
    ratios = [(f"{r['benchmark']}: {k}", v) for r in reports for k, v in r["ratios"].items()]
    if not ratios:
        return None
    labels, values = zip(*ratios, strict=True)
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(values) + 1.5))
    y = range(len(values))
    ax.barh(y, values, color="#4477aa")
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ours / baseline in the same run (log scale; for rates higher is better)")
    ax.set_title("DoSQL benchmarks: ratio to baseline")
    for i, value in enumerate(values):
        ax.annotate(f" {value:.3g}x", (value, i), va="center", fontsize=8)
    fig.tight_layout()
    out = results_dir / "latest.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
