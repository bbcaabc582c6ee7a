"""``python -m bench [names…] [--quick]``: run benchmarks, print, write JSON and a plot."""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

from bench import harness

BENCHMARKS = {
    "point_select": "bench.point_select",
    "ingest": "bench.ingest",
    "scatter_aggregate": "bench.scatter_aggregate",
    "cdc_throughput": "bench.cdc_throughput",
    "lake_flush": "bench.lake_flush",
    "lake_soak": "bench.lake_soak",
    "time_travel": "bench.time_travel",
    "tx_commit": "bench.tx_commit",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default all: {', '.join(BENCHMARKS)})"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 5 runs: a smoke run")
    parser.add_argument("--runs", type=int, default=5, help="measured runs per figure (min 5)")
    parser.add_argument("--results", type=Path, default=harness.RESULTS_DIR)
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    with tempfile.TemporaryDirectory(prefix="dosql-bench-") as tmp:
        ctx = harness.Context(quick=args.quick, runs=max(5, args.runs), workdir=Path(tmp))
        for i, name in enumerate(names, 1):
            print(f"[{i}/{len(names)}] {name} …", flush=True)
            report = importlib.import_module(BENCHMARKS[name]).run(ctx)
            print(harness.render(report), flush=True)
            print(f"  wrote {harness.write(report, args.results)}", flush=True)
    from bench.plot import plot

    png = plot(args.results)
    if png:
        print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
