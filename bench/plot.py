"""One PNG of the latest results: each benchmark's ratios against its baseline."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(results_dir: Path) -> Path | None:
    reports = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]
    ratios = [(f"{r['benchmark']}\n{k}", v) for r in reports for k, v in r["ratios"].items()]
    if not ratios:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(ratios)), 4.5))
    labels, values = zip(*ratios, strict=True)
    bars = ax.bar(range(len(values)), values, color="#4477aa")
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    ax.set_ylabel("ours / baseline (same run)")
    ax.set_title(
        "DoSQL benchmarks: ratio to baseline (lower is better for times, higher for rates)"
    )
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            f"{value:.2f}x",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    fig.tight_layout()
    out = results_dir / "latest.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
