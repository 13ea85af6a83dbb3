"""The wheel installs beside Hugging Face's `kernels` package without touching it.

soar-fast's kernels import as `soar_fast.kernels`; a wheel that shipped a top-level `kernels` would
overwrite that package's `__init__.py` and delete it again on uninstall. Built without build
isolation and installed with `--no-deps` into a plain venv (no system site-packages), so the only
download is `kernels` itself from PyPI (~6 MB): ~20 s. Deselect with `-m "not pypi"` when offline.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.pypi


def _run(*cmd: str | Path, cwd: Path | None = None) -> str:
    # No PYTHONPATH (the tests' own points at the checkout): the venv must see only what is installed in it.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _record_intact(site: Path, dist_info: Path) -> list[str]:
    """Files of an installed distribution whose sha256 no longer matches its RECORD (or are gone)."""
    bad = []
    with open(dist_info / "RECORD", newline="", encoding="utf-8") as f:
        for path, digest, _ in csv.reader(f):
            if not digest.startswith("sha256="):
                continue
            file = site / path
            if not file.is_file():
                bad.append(f"{path} (missing)")
                continue
            got = base64.urlsafe_b64encode(hashlib.sha256(file.read_bytes()).digest()).rstrip(b"=").decode()
            if got != digest.removeprefix("sha256="):
                bad.append(f"{path} (changed)")
    return bad


def test_wheel_beside_hugging_face_kernels(tmp_path):
    # Build from a copy: an in-tree build would write setuptools' build/ into CMake's build/ folder.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "soar_fast", src / "soar_fast", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist",
         src, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("soar_fast-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        top = {n.split("/")[0] for n in names}
        top_level = next(z.read(n).decode().split() for n in names if n.endswith(".dist-info/top_level.txt"))
    dist_info = next(t for t in top if t.endswith(".dist-info"))
    assert top == {"soar_fast", dist_info} and top_level == ["soar_fast"], sorted(top)
    assert "soar_fast/kernels/__init__.py" in names and "soar_fast/kernels/cuda/fused_aux_points.cu" in names

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    site = Path(_run(python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    _run(python, "-m", "pip", "install", "-q", "--no-deps", "kernels", cwd=tmp_path)
    (hf_info,) = site.glob("kernels-*.dist-info")
    hf_init = site / "kernels" / "__init__.py"
    assert "get_kernel" in hf_init.read_text()

    _run(python, "-m", "pip", "install", "-q", "--no-deps", wheel, cwd=tmp_path)
    assert _record_intact(site, hf_info) == []
    # Both import, each from its own files. Their dependencies (torch; huggingface_hub for `kernels`)
    # come from this interpreter's site-packages, appended after the venv's so they cannot shadow it.
    deps = sysconfig.get_paths()["purelib"]
    check = (f"import sys; sys.path.append({deps!r})\n"
             "import kernels, soar_fast.kernels.aux_points, soar_fast.kernels.cuda_aux\n"
             "from kernels import get_kernel\n"
             "print(kernels.__file__); print(soar_fast.kernels.__file__)")
    assert _run(python, "-I", "-c", check, cwd=tmp_path).split() == [
        str(hf_init), str(site / "soar_fast" / "kernels" / "__init__.py")]

    # Installed without its repository: `soar-fast bench` has no suite to run and says so (exit 2).
    bench = subprocess.run([str(python), "-I", "-m", "soar_fast.cli", "bench"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120, check=False)
    assert bench.returncode == 2 and "benchmark suite (bench/) is not installed" in bench.stderr, bench.stderr

    _run(python, "-m", "pip", "uninstall", "-y", "-q", "soar-fast", cwd=tmp_path)
    assert not (site / "soar_fast").exists()
    assert _record_intact(site, hf_info) == []
    after = ("import sys, importlib.util; assert importlib.util.find_spec('soar_fast') is None\n"
             f"sys.path.append({deps!r})\nfrom kernels import get_kernel\nimport kernels; print(kernels.__file__)")
    assert _run(python, "-I", "-c", after, cwd=tmp_path).strip() == str(hf_init)
