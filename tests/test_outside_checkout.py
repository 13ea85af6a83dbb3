"""The parts that live beside the package — the benchmark suite and the CMake build of the CUDA
library — are found from any current directory, and an install without its repository says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from soar_fast.checkout import source_checkout

REPO = Path(__file__).resolve().parents[1]


def test_the_tests_run_from_the_checkout():
    assert source_checkout() == REPO


def test_bench_from_another_directory_finds_the_suite(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "soar_fast.cli", "bench", "--collect-only", "-q"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "bench/test_step.py::test_step" in done.stdout and "no tests ran" not in done.stdout


def test_bench_without_the_repository_exits_2_with_the_reason(monkeypatch, capsys):
    from soar_fast import benchmarks

    monkeypatch.setattr(benchmarks, "source_checkout", lambda: None)
    assert benchmarks.main_bench([]) == 2
    err = capsys.readouterr().err
    assert "benchmark suite (bench/) is not installed" in err and "pip install -e ." in err


def test_cuda_library_is_looked_for_where_cmake_writes_it(monkeypatch, tmp_path):
    from soar_fast.kernels import cuda_aux

    monkeypatch.delenv(cuda_aux.ENV_VAR, raising=False)
    assert cuda_aux.candidate_paths()[0] == REPO / "build" / cuda_aux.LIB_NAME  # CMakeLists' output folder
    # An installed wheel: no repository around the package, hence no <repo>/build/ (nor site-packages/build/).
    site = tmp_path / "site-packages" / "soar_fast" / "kernels"
    monkeypatch.setattr(cuda_aux, "source_checkout", lambda: None)
    monkeypatch.setattr(cuda_aux, "__file__", str(site / "cuda_aux.py"))
    cuda_aux.reset_cache()
    try:
        assert cuda_aux.candidate_paths() == [site / cuda_aux.LIB_NAME]
        status = cuda_aux.library_status()
        assert f"looked for {site / cuda_aux.LIB_NAME})" in status
        assert "outside its repository" in status and cuda_aux.ENV_VAR in status
        monkeypatch.setenv(cuda_aux.ENV_VAR, str(tmp_path / "lib"))
        cuda_aux.reset_cache()
        status = cuda_aux.library_status()
        assert f"looked for {tmp_path / 'lib'})" in status and "names no file" in status
    finally:
        cuda_aux.reset_cache()
