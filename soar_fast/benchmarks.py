"""`soar-fast bench [PYTEST ARGS]`: the benchmark suite, `pytest bench/ --benchmark-only`.

The suite lives in the repository beside the package (`bench/`), not in an installed wheel, so it is
found through `checkout.source_checkout()` whatever the current directory, and pytest runs there (its
config is the repository's `pyproject.toml`). An install without the repository exits 2 saying so.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from soar_fast.checkout import source_checkout


def bench_suite() -> Path | None:
    """`<repo>/bench`, or None when this package does not run from its repository."""
    repo = source_checkout()
    suite = repo / "bench" if repo is not None else None
    return suite if suite is not None and (suite / "conftest.py").is_file() else None


def main_bench(argv: Sequence[str]) -> int:
    suite = bench_suite()
    if suite is None:
        where = source_checkout() or Path(__file__).resolve().parent
        print(f"soar-fast: error: the benchmark suite (bench/) is not installed with the package and there is "
              f"no soar-fast repository around {where}; run `soar-fast bench` from an install of a "
              f"checkout (`pip install -e .`)", file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "pytest", str(suite), "--benchmark-only", *argv]
    return subprocess.call(cmd, cwd=suite.parent)
