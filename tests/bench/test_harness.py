"""The benchmark harness runs end to end in quick mode and writes sane JSON.

This checks the harness works, never speed: no timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import Figure, Report, percentile, render

ROOT = Path(__file__).resolve().parents[2]


def test_statistics_and_ratios() -> None:
    report = Report("x")
    report.figures.append(Figure("ours", "ms", [3.0, 1.0, 2.0, 9.0, 2.0]))
    report.baselines.append(Figure("base", "ms", [1.0, 1.0, 1.0, 1.0, 1.0]))
    report.ratios.append(("ours_over_base", "ours", "base"))
    assert report.figure("ours").median == 2.0
    assert report.figure("ours").spread == (1.0, 9.0)
    assert report.ratio_values() == {"ours_over_base": 2.0}
    assert "2.000x" in render(report)
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile(list(range(101)), 99) == 99


@pytest.mark.slow
def test_quick_run_writes_results(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "ingest",  # the two quickest (point_select's quick run takes ~30 s more);
            "tx_commit",  # this one reads the shards' /metrics histograms
            "--quick",
            "--results",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("ingest", "tx_commit"):
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["benchmark"] == name
        assert data["figures"] and data["baselines"] and data["ratios"]
        assert all(f["runs"] >= 5 for f in data["figures"] + data["baselines"])
        assert all(r > 0 for r in data["ratios"].values())
        assert data["machine"]["cpus"] >= 1
    assert (tmp_path / "latest.png").stat().st_size > 0
