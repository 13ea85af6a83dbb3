"""SOAR vs SFT from one base, at toy scale (docs/experiments.md): pretrain a base with SFT, post-train
SFT and SOAR for the same steps and SFT also for SOAR's executed FLOPs, over several seeds; score every
checkpoint with the shapes detector and measure exposure bias with `diagnose`."""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench.toy import runs, scoring, setup
from bench.toy.protocol import Protocol

ARMS = ("sft", "soar", "sft_flops")


def flops_ratio(p: Protocol) -> float:
    """Executed FLOPs of one fast SOAR step over one SFT step (soar_fast.accel.flops), same batch."""
    from soar_fast.accel.flops import fast_work, sft_work, step_flops
    from soar_fast.models.text import CLIP_LENGTH

    cfg = setup.transformer_config(p)
    n_image, n_text = (p.side // 4) ** 2, CLIP_LENGTH + p.text_tokens
    soar = step_flops(cfg, n_image, n_text, fast_work(p.batch_size, p.trajectory_length * p.batch_size,
                                                      rollout_reuse_cond=True, checkpointing="none"))
    return soar / step_flops(cfg, n_image, n_text, sft_work(p.batch_size, checkpointing="none"))


def post_runs(p: Protocol, base_model: Path) -> list[runs.Run]:
    ratio = flops_ratio(p)
    out = []
    for seed in p.seeds:
        for arm in ARMS:
            steps = round(p.post_steps * ratio) if arm == "sft_flops" else p.post_steps
            out.append(runs.Run(name=f"{arm}-s{seed}", arm=arm, seed=seed, steps=steps, lr=p.post_lr, warmup=0,
                                objective="soar" if arm == "soar" else "sft", model=base_model,
                                every=max(1, steps // p.post_checkpoints)))
    return out


def _train_and_score(run: runs.Run, p: Protocol, root: Path, shared: dict) -> dict:
    record = runs.train(run, p, root, shared["train_jsonl"])
    if "scores" not in record:
        record["scores"] = []
        for i, ckpt in enumerate(record["checkpoints"]):
            last = i == len(record["checkpoints"]) - 1
            sheet = root / "sheets" / run.name if last else None
            record["scores"].append({"step": int(Path(ckpt).name.split("-")[1]),
                                     **scoring.score_checkpoint(shared["model_init"], ckpt, shared["prompts"], p,
                                                                sheet)})
        (run.folder(root) / "toy-run.json").write_text(json.dumps(record, indent=1))
    return record


def _diagnose(label_paths: list[tuple[str, str]], p: Protocol, root: Path, shared: dict, tag: str) -> dict:
    import dataclasses

    from soar_fast.config import Config
    from soar_fast.eval.diagnose import diagnose_checkpoints

    cfg = Config()
    cfg = dataclasses.replace(
        cfg, run=dataclasses.replace(cfg.run, output_dir=str(root / "diagnose" / tag), device="cpu", cpu_threads=1),
        model=dataclasses.replace(cfg.model, path=str(shared["model_init"]), resolution=p.side),
        data=dataclasses.replace(cfg.data, jsonl=str(shared["heldout_jsonl"]), batch_size=16,
                                 max_sequence_length=p.text_tokens),
        soar=dataclasses.replace(cfg.soar, cfg_scale=p.cfg_scale, num_sampling_steps=p.sampling_steps),
        eval=dataclasses.replace(cfg.eval, dtype="float32"))
    return diagnose_checkpoints(cfg, [path for _, path in label_paths], labels=[name for name, _ in label_paths],
                                samples=p.diagnose_samples, sigmas=p.diagnose_sigmas,
                                rollout_steps=p.trajectory_length, output_dir=str(root / "diagnose" / tag))


def run_experiment(p: Protocol, root: Path, log=print) -> dict:
    """Everything under `root` (a finished stage is kept, so a stopped experiment continues)."""
    started = time.perf_counter()
    root = Path(root).resolve()
    shared = setup.prepare(root, p)
    shared["model_init"] = shared.pop("model")
    log(f"[toy] data: {p.train_images} training images, {len(shared['prompts'])} held-out prompts in {root}")
    base = runs.Run(name="base", arm="base", seed=0, steps=p.base_steps, lr=p.base_lr, warmup=p.base_warmup,
                    objective="sft", model=shared["model_init"], every=0)
    base_record = _train_and_score(base, p, root, shared)
    log(f"[toy] base: {p.base_steps} SFT steps in {base_record['wall_s']:.0f} s; "
        + ", ".join(f"{k} {v['overall']:.3f}" for k, v in base_record["scores"][-1].items() if k != "step"))
    base_ckpt = base_record["checkpoints"][-1]
    base_model = setup.model_with_transformer(shared["model_init"], Path(base_ckpt) / "transformer",
                                              root / "model-base")
    planned = post_runs(p, base_model)
    ctx = multiprocessing.get_context("spawn")
    records = {}
    with ProcessPoolExecutor(max_workers=p.workers, mp_context=ctx) as pool:
        futures = {pool.submit(_train_and_score, r, p, root, shared): r for r in planned}
        for future in futures:
            rec = future.result()
            records[rec["name"]] = rec
            log(f"[toy] {rec['name']}: {rec['steps']} steps in {rec['wall_s']:.0f} s; "
                + ", ".join(f"{k} {v['overall']:.3f}" for k, v in rec["scores"][-1].items() if k != "step"))
        diag_futures = []
        for seed in p.seeds:
            label_paths = [("base", base_ckpt)] + [(arm, records[f"{arm}-s{seed}"]["checkpoints"][-1]) for arm in ARMS]
            diag_futures.append(pool.submit(_diagnose, label_paths, p, root, shared, f"s{seed}"))
        diagnoses = [f.result() for f in diag_futures]
    log(f"[toy] diagnose: {len(diagnoses)} seeds")
    return {"protocol": p.as_dict(), "flops_ratio": flops_ratio(p), "base": base_record,
            "runs": [records[r.name] for r in planned], "diagnose": diagnoses,
            "wall_s": round(time.perf_counter() - started, 1)}
