"""Where the soar-fast repository is, for the parts that live beside the package, not in it: the
benchmark suite (`bench/`) and the CMake build of the CUDA library (`build/`).

An editable install (`pip install -e .`) or a run from the checkout has the package inside the
repository; an installed wheel has neither of them next to it. A leaf: standard library only.
"""

from __future__ import annotations

from pathlib import Path


def source_checkout() -> Path | None:
    """The repository root holding this `soar_fast` package, or None when the package is installed
    elsewhere (a wheel in site-packages)."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "CMakeLists.txt").is_file():
        return root
    return None
