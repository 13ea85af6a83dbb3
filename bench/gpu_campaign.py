"""The GPU campaign: everything a first window on a bare GPU machine should measure, in priority order,
within a wall-clock budget (run it through bench/gpu_campaign.sh; docs/performance.md says how).

    environment (GPU, driver, torch, CUDA, triton) → ceilings (bf16 matmul peak, HBM copy bandwidth,
    `triton.testing.do_bench`) → the CUDA C++ library build → correctness tests on CUDA → kernel
    bandwidth benchmark → step rows (sd35m 512², B = 4, K = 6: reference, fast, then the ablations;
    B = 16; the remaining ablations) → step-<gpu>.json + step.md

Everything lands in `--out` as soon as it is known: `campaign.json` is rewritten after each phase and
each step row is appended to `steps.jsonl` the moment it is measured, so a run cut short still returns
what it measured. A phase or row that would not fit in the time left is skipped and says so; a row
that needs a missing package (torchao) or fails is recorded with the reason and the campaign goes on.
Compile and capture time (`first_step_s`, `warmup_s`) is kept apart from the steady-state step time.

`--dry-run` runs the same phases on CPU in seconds: tiny preset at 64 px, one round per row, the
Triton interpreter for the kernel tests, a smaller test selection (tests/test_gpu_campaign.py).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESERVE_S = 20.0          # kept back for the final files
CORRECTNESS_TESTS = ["tests/kernels", "tests/test_accel_misc.py", "tests/test_accel_float8.py",
                     "tests/test_accel_attention.py"]
# The SD3.5-M latent at 512² only: the 1024² rows double the phase for nothing the step bench uses.
KERNEL_BENCH_SELECTION = "16x64x64 or step_pieces"
CORRECTNESS_TESTS_CUDA_LIB = ["tests/test_cuda_aux_gpu.py"]
DRY_RUN_TESTS = ["tests/kernels/test_ops.py::test_kernels_really_run_here",
                 "tests/kernels/test_aux_points.py::test_without_targets_writes_the_same_latents"]
KERNEL_BENCHES = ["bench/test_kernels.py", "bench/test_cuda_aux.py", "bench/test_step_pieces.py"]


class OutOfTime(BaseException):  # not an Exception: a failing row's handler must not swallow it
    """The budget's alarm: stop measuring and write what there is."""


def _alarm(signum, frame):
    raise OutOfTime


class Campaign:
    """The run's clock and its output files."""

    def __init__(self, out: Path, started: float, budget_s: float, dry_run: bool):
        self.out, self.started, self.deadline, self.dry_run = out, started, started + budget_s, dry_run
        self.summary: dict = {"dry_run": dry_run, "budget_s": budget_s, "phases": [], "skipped": []}
        out.mkdir(parents=True, exist_ok=True)
        (out / "steps.jsonl").write_text("")

    def left(self) -> float:
        return self.deadline - time.time()

    def save(self) -> None:
        self.summary["elapsed_s"] = round(time.time() - self.started, 1)
        _write_json(self.out / "campaign.json", self.summary)

    def phase(self, name: str, seconds: float, **info) -> None:
        self.summary["phases"].append({"phase": name, "seconds": round(seconds, 1), **info})
        print(f"[{time.time() - self.started:6.1f} s] {name}: " + ", ".join(f"{k}={v}" for k, v in info.items()),
              flush=True)
        self.save()

    def skip(self, what: str, reason: str) -> None:
        self.summary["skipped"].append({"what": what, "reason": reason})
        print(f"[{time.time() - self.started:6.1f} s] skipped {what}: {reason}", flush=True)
        self.save()

    def append_row(self, row: dict) -> None:
        with open(self.out / "steps.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def commit_of(wheels: Path | None) -> str:
    """The commit the campaign runs: git here, else what bench/fetch_gpu_wheels.sh recorded."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], check=False, cwd=REPO, capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], check=False, cwd=REPO,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    recorded = wheels / "commit.txt" if wheels else None
    return recorded.read_text().strip() if recorded and recorded.is_file() else "unknown"


def environment(wheels: Path | None) -> dict:
    import torch

    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "commit": commit_of(wheels), "python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "triton": _version("triton"), "numpy": _version("numpy"),
           "diffusers": _version("diffusers"), "transformers": _version("transformers"),
           "torchao": _version("torchao"), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
                   gpu_memory_gib=round(props.total_memory / 2**30, 1))
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"]
            env["driver"] = subprocess.run(query, check=False, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError) as err:
            env["driver"] = f"nvidia-smi failed: {err}"
    else:
        env.update(gpu="none (CPU dry run)", driver="none")
    return env


def ceilings(dry_run: bool) -> dict:
    """This card's bf16 matmul rate and device copy bandwidth, the ceilings MFU and %BW are read against.
    Random data (zeros run faster than real data on these matrix units)."""
    import torch

    if not torch.cuda.is_available():
        n, nbytes = 256, 2**22   # CPU dry run: the same arithmetic, sizes that take milliseconds
        a, b = torch.randn(n, n), torch.randn(n, n)
        src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8)
        dst = torch.empty_like(src)
        ms_mm = _cpu_median_ms(lambda: a @ b)
        ms_copy = _cpu_median_ms(lambda: dst.copy_(src))
        timer = "perf_counter (CPU dry run)"
    else:
        from triton.testing import do_bench

        n, nbytes = 8192, 2 * 2**30
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        ms_mm = do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
        ms_copy = do_bench(lambda: dst.copy_(src), warmup=20, rep=200, return_mode="median")
        timer = "triton.testing.do_bench (median)"
    return {"bf16_matmul_tflops": 2 * n**3 / ms_mm / 1e9, "matmul_n": n,
            "copy_gb_per_s": 2 * nbytes / ms_copy / 1e6, "copy_bytes": nbytes, "timer": timer}


def _cpu_median_ms(fn, reps: int = 7) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def run_phase(campaign: Campaign, name: str, cmd: list[str], *, limit_s: float, log: str, env=None) -> None:
    """A subprocess phase, cut at `limit_s` (or the time left); its output appended to `log`."""
    limit = min(limit_s, campaign.left() - RESERVE_S)
    if limit < 15:
        campaign.skip(name, f"time budget ({campaign.left():.0f} s left)")
        return
    start = time.time()
    with open(campaign.out / log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, check=False, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=limit,
                                env=env).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    tail = (campaign.out / log).read_text().strip().splitlines()[-1:] or [""]
    campaign.phase(name, time.time() - start, rc=rc, last_line=tail[0][-200:])


def start_cuda_library_build(campaign: Campaign) -> subprocess.Popen | None:
    """Build the CUDA C++ library in the background (CPU work) while the Triton tests use the GPU."""
    if shutil.which("nvcc") is None or shutil.which("cmake") is None:
        campaign.skip("cuda library", "nvcc or cmake not on PATH")
        return None
    build = ("cmake -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 "
             "&& cmake --build build -j")
    log = open(campaign.out / "build.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(["bash", "-c", build], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def finish_cuda_library_build(campaign: Campaign, proc: subprocess.Popen | None, started: float) -> bool:
    if proc is None:
        return False
    try:
        rc = proc.wait(timeout=max(campaign.left() - 240, 5))  # keep >= 4 minutes for the step rows
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = "timeout"
    build_log = campaign.out / "build.log"
    text = build_log.read_text()
    build_log.unlink()  # into tests.log: at most 8 files come back from a device run
    with open(campaign.out / "tests.log", "a") as f:
        f.write("$ cmake build (CUDA C++ library)\n" + text)
    tail = text.strip().splitlines()[-1:] or [""]
    campaign.phase("cuda library", time.time() - started, rc=rc, last_line=tail[0][-200:])
    return rc == 0


def step_plan(dry_run: bool) -> list[tuple[str, int, int, str]]:
    """(preset, resolution, batch, mode) in priority order: reference and fast, the switches a GPU
    decides (compile, CUDA graphs, float8, adamw8bit, checkpointing), B = 16, then the rest."""
    from bench.step_runner import step_modes

    modes = list(step_modes(cuda=not dry_run))
    first = [m for m in modes if m in ("reference", "fast")]
    ablations = [m for m in modes if m.startswith(("fast-no_compile", "fast-no_cuda_graphs", "fast+float8",
                                                   "fast+adamw8bit", "fast+ckpt", "reference-no_ckpt"))]
    rest = [m for m in modes if m not in first and m not in ablations]
    preset, resolution, small, large = ("tiny", 64, 4, 8) if dry_run else ("sd35m", 512, 4, 16)
    plan = [(preset, resolution, small, m) for m in first + ablations]
    plan += [(preset, resolution, large, m) for m in ("reference", "fast")]
    plan += [(preset, resolution, small, m) for m in rest]
    if dry_run:  # one row per code path of the runner (plain, no-checkpointing hook, encoders, chunked B)
        keep = {"reference", "fast", "reference-no_ckpt", "reference_encode"}
        plan = [p for p in plan if p[3] in keep and (p[2] == small or p[3] == "fast")]
    return plan


def measure_steps(campaign: Campaign, rows: list[dict], peak_flops: float | None, *, rounds: int,
                  warmup: int) -> None:
    """Measure the plan's rows into `rows` (appended as measured, so an alarm loses none)."""
    import torch

    from bench.step_runner import (
        Inputs,
        build_mode,
        cpu_step_peak_bytes,
        make_row,
        needs_torchao,
        release,
        step_modes,
        time_interleaved,
    )

    device = torch.device("cuda" if not campaign.dry_run else "cpu")
    if not campaign.dry_run:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    modes = step_modes(cuda=not campaign.dry_run)
    walls: dict[str, list[float]] = {}
    for preset, resolution, batch, mode in step_plan(campaign.dry_run):
        what = f"{mode} B={batch}"
        switches = modes[mode]
        if needs_torchao(switches) and importlib.util.find_spec("torchao") is None:
            campaign.skip(what, "needs torchao, which the image lacks (no wheel brought: it must match torch)")
            continue
        similar = walls.get(mode) or [w for ws in walls.values() for w in ws]
        estimate = (statistics.median(similar) * batch / 4) if similar else 0.0
        if campaign.left() - RESERVE_S < max(estimate, 10.0):
            campaign.skip(what, f"time budget ({campaign.left():.0f} s left, ~{estimate:.0f} s needed)")
            continue
        start = time.time()
        built = None
        try:
            torch._dynamo.reset()   # each mode compiles its own model; keep dynamo's caches per mode
            release(device)
            built = build_mode(mode, switches, preset, resolution, batch, Inputs(preset, resolution, batch, device),
                               device, warmup=warmup)
            time_interleaved([built], max(min(rounds, 3), rounds * 4 // batch), device)
            if device.type == "cpu":
                built.cpu_peak_bytes = cpu_step_peak_bytes(built)
            row = make_row(built, preset=preset, resolution=resolution, batch=batch, device=device,
                           peak_flops=peak_flops, reference=None, timing="alone")
        except OutOfTime:
            campaign.skip(what, "the budget ran out during this row")
            raise
        except torch.cuda.OutOfMemoryError as err:
            campaign.skip(what, f"out of memory: {str(err).splitlines()[0][:200]}")
            continue
        except Exception as err:  # noqa: BLE001 - one failing row must not cost the others
            campaign.skip(what, f"failed: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}")
            continue
        finally:
            built = None
            release(device)
        row["wall_s"] = round(time.time() - start, 1)
        walls.setdefault(mode, []).append(row["wall_s"] * 4 / batch)
        campaign.append_row(row)
        rows.append(row)
        campaign.phase(f"step {what}", row["wall_s"], ms_per_step=round(row["ms_per_step"], 1),
                       first_step_s=round(row["first_step_s"], 1), attention_ran=row["attention_ran"])


def write_results(campaign: Campaign, rows: list[dict]) -> None:
    """bench/results/-style files: step-<gpu>.json (environment, ceilings, rows, skips) and step.md."""
    from bench.step_table import step_table

    env = campaign.summary.get("environment", {})
    label = "cpu-dry-run" if campaign.dry_run else env.get("gpu", "gpu").lower().replace("nvidia ", "").replace(" ", "-")
    _write_json(campaign.out / f"step-{label}.json", {
        "environment": env, "ceilings": campaign.summary.get("ceilings"), "rows": rows,
        "skipped": campaign.summary["skipped"], "phases": campaign.summary["phases"]})
    ceil = campaign.summary.get("ceilings") or {}
    head = [f"GPU: {env.get('gpu')} (driver {env.get('driver')}); commit {env.get('commit')}; date {env.get('date')}",
            (f"torch {env.get('torch')} (CUDA {env.get('cuda')}), triton {env.get('triton')}, "
             f"diffusers {env.get('diffusers')}, torchao {env.get('torchao')}"),
            (f"Ceilings measured in this run: bf16 matmul {ceil.get('bf16_matmul_tflops', 0):.0f} TFLOP/s, "
             f"copy {ceil.get('copy_gb_per_s', 0):.0f} GB/s ({ceil.get('timer')})"),
            ("Each mode timed alone (its own model and optimizer; one SD3.5-M training state per card): "
             "× ref is the ratio of median step times; first step s = compile + capture + the first step."), ""]
    body = step_table(rows) if rows else "no step rows measured\n"
    skipped = "".join(f"- skipped {s['what']}: {s['reason']}\n" for s in campaign.summary["skipped"])
    (campaign.out / "step.md").write_text("\n".join(head) + "\n" + body + ("\n" + skipped if skipped else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/gpu_campaign.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "runs" / "gpu-campaign"))
    parser.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget from --started")
    parser.add_argument("--started", type=float, default=None, help="epoch seconds the budget counts from")
    parser.add_argument("--wheels", default=None, help="the wheel folder (for the recorded commit)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--dry-run", action="store_true", help="CPU: tiny preset, interpreter, one round each")
    args = parser.parse_args(argv)

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_campaign: no CUDA device; use --dry-run on CPU", file=sys.stderr)
        return 2
    if importlib.util.find_spec("diffusers") is None:
        print("gpu_campaign: diffusers is not installed; bring the wheels: bash bench/fetch_gpu_wheels.sh .whl "
              "(then pass --wheels .whl)", file=sys.stderr)
        return 2
    campaign = Campaign(Path(args.out), args.started or time.time(), args.budget_s, args.dry_run)
    # A hard stop a few seconds before the budget ends, whatever is running (a compile, a subprocess):
    # the rows measured so far are already on disk, and the final files are written from them.
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(max(int(campaign.left() - 8), 1))
    wheels = Path(args.wheels) if args.wheels else None
    rows: list[dict] = []
    try:
        start = time.time()
        campaign.summary["environment"] = environment(wheels)
        campaign.phase("environment", time.time() - start, **{k: campaign.summary["environment"][k] for k in
                                                               ("gpu", "driver", "torch", "cuda", "triton")})
        start = time.time()
        campaign.summary["ceilings"] = ceil = ceilings(args.dry_run)
        campaign.phase("ceilings", time.time() - start, bf16_matmul_tflops=round(ceil["bf16_matmul_tflops"], 1),
                       copy_gb_per_s=round(ceil["copy_gb_per_s"], 1))

        python = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        env = dict(os.environ, SOAR_FAST_BENCH_RESULTS=str(campaign.out))
        if args.dry_run:
            env["TRITON_INTERPRET"] = "1"
            run_phase(campaign, "correctness tests", python + DRY_RUN_TESTS, limit_s=60, log="tests.log", env=env)
            run_phase(campaign, "kernel bandwidth", python + ["bench/test_kernels.py", "--benchmark-only",
                      "--benchmark-json", str(campaign.out / "kernels.json")], limit_s=60, log="tests.log", env=env)
        else:
            build_started = time.time()
            build = start_cuda_library_build(campaign)
            run_phase(campaign, "correctness tests", python + ["--maxfail=5"] + CORRECTNESS_TESTS, limit_s=120,
                      log="tests.log", env=env)
            if finish_cuda_library_build(campaign, build, build_started):
                run_phase(campaign, "correctness tests (CUDA C++)", python + CORRECTNESS_TESTS_CUDA_LIB, limit_s=30,
                          log="tests.log", env=env)
            run_phase(campaign, "kernel bandwidth", python + KERNEL_BENCHES + [
                "-k", KERNEL_BENCH_SELECTION, "--benchmark-only", "--benchmark-json",
                str(campaign.out / "kernels.json")], limit_s=60, log="tests.log", env=env)

        rounds = args.rounds or (1 if args.dry_run else 5)
        measure_steps(campaign, rows, 1e12 * ceil["bf16_matmul_tflops"] if not args.dry_run else None,
                      rounds=rounds, warmup=1 if args.dry_run else 2)
    except OutOfTime:
        campaign.skip("the rest of the campaign", "the budget ran out")
    signal.alarm(0)
    write_results(campaign, rows)
    campaign.phase("done", time.time() - campaign.started, rows=len(rows), skipped=len(campaign.summary["skipped"]))
    print((campaign.out / "step.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
