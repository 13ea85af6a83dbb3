"""`python -m bench.toy [--size full|smoke] [--work DIR] [--results DIR]`: the toy experiment."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from bench.toy import report
from bench.toy.experiment import run_experiment
from bench.toy.protocol import PROTOCOLS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.toy", description=__doc__)
    ap.add_argument("--size", choices=sorted(PROTOCOLS), default="full")
    ap.add_argument("--work", default=None, help="runs, data and samples (default runs/toy-<size>)")
    ap.add_argument("--results", default=None, help="results folder (default bench/results/toy for the "
                                                    "full size, <work>/results otherwise)")
    ap.add_argument("--fresh", action="store_true", help="delete the work folder first (else finished "
                                                         "stages are reused)")
    args = ap.parse_args(argv)
    p = PROTOCOLS[args.size]
    work = Path(args.work or f"runs/toy-{args.size}")
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    results = Path(args.results) if args.results else (
        Path("bench/results/toy") if args.size == "full" else work / "results")
    result = run_experiment(p, work)
    for path in report.write(result, results):
        print(f"[toy] wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
