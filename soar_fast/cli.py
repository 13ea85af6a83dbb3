"""`soar-fast` command line: parse, load the config, hand over to the subcommand's module.

Thin on purpose: every subcommand lives in its own module, imported only when called, so a config
error is reported before torch is even imported, and a subcommand whose module is missing says so
without breaking the others. Exit codes: 0 ok, 1 failed run (bad data, non-finite loss), 2 usage
or config error. The one error boundary is `main`: a `UserError` (what the product raises on purpose:
config, model folder, data, scorer weights, an existing output) is one line with its exit code; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from soar_fast import __version__
from soar_fast.config_io import dump_config, load_config, split_overrides
from soar_fast.errors import OutputExistsError, UserError

# command -> "module:function"; each function is called as fn(cfg, args) and returns an exit code.
COMMANDS = {
    "train": "soar_fast.train.run:main_train",
    "cache": "soar_fast.data.cache:main_cache",
    "data check": "soar_fast.data.check:main_check",
    "profile": "soar_fast.train.profile:main_profile",
    "plan": "soar_fast.plan.command:main_plan",
    "sample": "soar_fast.eval.sample:main_sample",
    "eval": "soar_fast.eval.run:main_eval",
    "export": "soar_fast.models.lora_export:main_export",
    "diagnose": "soar_fast.eval.diagnose_command:main_diagnose",
}
PRESET_EXPORTS = {
    "tiny": "soar_fast.models.export:export_tiny_pipeline",
    "toy": "soar_fast.models.export:export_toy_pipeline",
    "tiny-clip": "soar_fast.eval.tiny_clip:export_tiny_clip",
}
OVERRIDE_HELP = ("any config field as --section.key=value (e.g. --train.max_steps=20); lists are "
                 "comma-separated, dict entries --eval.weights.NAME=PATH, Optional fields take 'none'")


class CommandUnavailable(UserError):
    """The module behind a subcommand is not in this build."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="soar-fast", description="Fast, exact SOAR post-training for SD3/SD3.5.",
                                epilog=f"Config overrides: {OVERRIDE_HELP}.")
    p.add_argument("--version", action="version", version=f"soar-fast {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(name: str, help: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help, epilog=f"Config overrides: {OVERRIDE_HELP}.")
        q.add_argument("config", nargs="?", metavar="CONFIG", help="TOML file (default: the embedded demo)")
        return q

    t = with_config("train", "train (no CONFIG: the embedded CPU demo)")
    t.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                   help="continue from the latest checkpoint in run.output_dir, or from PATH "
                        "(a checkpoints/step-N folder or a run folder)")
    t.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    with_config("cache", "encode the data set once (text embeddings, VAE posteriors)")
    d = sub.add_parser("data", help="data set tools")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    check = dsub.add_parser("check", help="scan the JSONL and images, report bad samples")
    check.add_argument("config", nargs="?", metavar="CONFIG")
    pre = sub.add_parser("preset", help="built-in model folders")
    psub = pre.add_subparsers(dest="preset_command", required=True, metavar="SUBCOMMAND")
    exp = psub.add_parser("export", help="write a complete tiny diffusers folder (random weights)")
    exp.add_argument("name", choices=sorted(PRESET_EXPORTS))
    exp.add_argument("dir")
    prof = with_config("profile", "profile a few training steps")
    prof.add_argument("--steps", type=int, default=10)
    prof.add_argument("--nsys", action="store_true", help="mark the steps with NVTX ranges for Nsight Systems")
    plan = with_config("plan", "predict peak memory and step cost on fake tensors (no weights, no GPU)")
    plan.add_argument("--gpu", metavar="NAME", help="target GPU: H200 (default unless --run.device=cpu), H100-80G, "
                      "A100-80G, A100-40G, L40S, RTX4090")
    plan.add_argument("--world", type=int, default=1, metavar="N", help="FSDP2 ranks (parallel.strategy = fsdp2)")
    plan.add_argument("--headroom", type=float, default=0.1, metavar="F",
                      help="fraction of GPU memory kept free for context, workspaces, fragmentation (0.1)")
    plan.add_argument("--sweep", action="store_true", help="a grid of checkpointing, aux_chunk, optimizer, batch")
    plan.add_argument("--sweep-batch", metavar="B,B", help="batch sizes of the sweep (default: data.batch_size)")
    plan.add_argument("--json", action="store_true", help="one JSON object on stdout")
    sub.add_parser("bench", help="run the benchmark suite (pytest bench/ --benchmark-only)", add_help=False)
    with_config("sample", "sample images with a model or checkpoint")
    with_config("eval", "sample and score a prompt set")
    lx = sub.add_parser("export", help="a LoRA run's adapter in diffusers' LoRA format, or merged (--merge)",
                        epilog="--model.path=DIR: the base, when it is no longer where training found it.")
    lx.add_argument("source", metavar="SOURCE", help="a run folder, a checkpoints/step-N folder or a lora/ folder")
    lx.add_argument("out", metavar="OUT", help="the folder to write (new or empty)")
    lx.add_argument("--merge", action="store_true", help="write a full transformer folder: base + adapter merged")
    lx.add_argument("--ema", action="store_true", help="the EMA of the adapter (ema.decay > 0) instead of the adapter")
    lx.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="dtype written (float32)")
    _diagnose_parser(with_config("diagnose", "exposure bias of checkpoints: teacher-forced vs self-rollout error"))
    return p


def _diagnose_parser(q: argparse.ArgumentParser) -> None:
    q.add_argument("--checkpoint", action="append", required=True, metavar="PATH",
                   help="a checkpoints/step-N, transformer/ or run folder; repeat to compare several")
    q.add_argument("--samples", type=int, metavar="N", help="samples measured (16)")
    q.add_argument("--sigmas", metavar="S,S", help="start sigmas (default 0.95,0.9,0.8,...,0.1)")
    q.add_argument("--rollout-steps", type=int, metavar="N", help="Euler steps of the self-rollout (6)")
    q.add_argument("--cfg-scale", type=float, metavar="W", help="guidance of the rollout (default soar.cfg_scale)")
    q.add_argument("--sampling-steps", type=int, metavar="S",
                   help="steps t -> t - 1/S on the sigma grid (default soar.num_sampling_steps)")
    q.add_argument("--seed", type=int, metavar="N", help="noise seed; sample i uses seed + i (default eval.seed)")
    q.add_argument("--batch-size", type=int, metavar="B", help="samples per forward (default data.batch_size)")
    q.add_argument("--data", metavar="JSONL", help="measure on this reference-format JSONL instead of the run's data")
    q.add_argument("--out", metavar="DIR", help="output folder (default <run.output_dir>/diagnose)")


def _resolve(target: str):
    module_name, func = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise CommandUnavailable(f"{module_name} is not in this build yet") from None
        raise
    if not hasattr(module, func):
        raise CommandUnavailable(f"{module_name} has no {func}() yet")
    return getattr(module, func)


def quiet_third_party() -> None:
    """Keep import-time noise of diffusers/transformers/torchao (e.g. torchao's CUDA-only extensions
    failing to load on a CPU machine) out of the run log. CLI only: library code leaves logging alone."""
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # tensorboard's optional TensorFlow probe
    for name in ("torchao", "torch.utils._pytree", "diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(diffusers|transformers|torchao)\b")


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(message)s", datefmt="%H:%M:%S"))
    root = logging.getLogger("soar_fast")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def _fail(code: int, message: str) -> int:
    for line in message.splitlines() or [""]:
        print(f"soar-fast: error: {line}", file=sys.stderr)
    return code


def _export_preset(name: str, directory: str) -> None:
    if os.path.exists(directory) and not (os.path.isdir(directory) and not os.listdir(directory)):
        raise OutputExistsError(f"{directory} already exists: preset export writes a new folder (choose "
                                "another path, or remove this one first)")
    _resolve(PRESET_EXPORTS[name])(directory)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # every other argument is pytest's
        return _resolve("soar_fast.benchmarks:main_bench")(argv[1:])
    rest, overrides = split_overrides(argv)
    args = _parser().parse_args(rest)
    # `train --resume cfg.toml`: argparse hands the CONFIG to --resume's optional value.
    if getattr(args, "resume", None) and args.config is None and args.resume.endswith(".toml") \
            and os.path.isfile(args.resume):
        args.config, args.resume = args.resume, ""
    command = args.command
    if command == "data":
        command = f"data {args.data_command}"
    try:
        return _run(command, args, overrides)
    except CommandUnavailable as e:
        return _fail(e.exit_code, f"'{command}' is not available: {e}")
    except UserError as e:
        return _fail(e.exit_code, str(e))
    except KeyboardInterrupt:  # a second Ctrl-C: the first one already asked for a clean stop
        return _fail(130, "interrupted")


def _run(command: str, args: argparse.Namespace, overrides: list[str]) -> int:
    cfg = load_config(getattr(args, "config", None), overrides)
    if command == "preset":
        if overrides:
            return _fail(2, "preset export takes no config overrides")
    elif getattr(args, "print_config", False):
        sys.stdout.write(dump_config(cfg))
        return 0

    quiet_third_party()
    setup_logging()
    if command == "preset":
        _export_preset(args.name, args.dir)
        print(f"wrote {args.name} to {args.dir}")
        return 0
    args.overrides = overrides  # commands that reload a run's saved config apply them again
    return int(_resolve(COMMANDS[command])(cfg, args) or 0)


if __name__ == "__main__":
    sys.exit(main())
