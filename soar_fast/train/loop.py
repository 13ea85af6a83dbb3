"""The training loop: steps, log steps (the only host syncs), checkpoints, a clean stop on a signal.

Outputs under `run.output_dir`: metrics.jsonl, tensorboard/, plots/loss.png, checkpoints/step-N/,
and the final transformer/ (in `model.dtype`), or with LoRA the final adapter lora/; with `ema.decay` > 0
the EMA weights beside them, `transformer_ema/` (or `lora_ema/`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field

import torch

from soar_fast.atomic import save_folder_atomically
from soar_fast.errors import UserError
from soar_fast.models.ema_folder import EMA_ADAPTER_EXPORT, EMA_EXPORT
from soar_fast.models.lora import info_of
from soar_fast.models.lora_io import FOLDER as LORA_FOLDER
from soar_fast.models.lora_io import save_adapter
from soar_fast.parallel import Dist, sum_over_ranks, unwrap
from soar_fast.train.checkpoint import save_checkpoint, save_transformer
from soar_fast.train.metrics import MetricsLog
from soar_fast.train.trainer import StepResult, Trainer

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError, RuntimeError):
    """The loss (or the gradient norm) became NaN/inf; the message names the step."""


class GracefulStop:
    """SIGINT/SIGTERM set a flag: the loop finishes its step, saves a checkpoint and returns.
    A second SIGINT raises KeyboardInterrupt at once (for a user who really wants out)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        log.warning("%s received: finishing this step, then saving a checkpoint", self.signal_name)

    def __enter__(self) -> GracefulStop:  # noqa: PYI034 (typing.Self needs Python 3.11)
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class Window:
    """Device-side sums over the steps since the last log step (adding to them never syncs)."""

    sums: torch.Tensor | None = None
    steps: int = 0
    samples: int = 0
    tokens: int = 0
    lr: float = 0.0
    with_aux: bool = True
    """False under `soar.objective = "sft"`: the record leaves `loss_aux` out (there is no aux term)."""
    start: float = field(default_factory=time.perf_counter)

    def add(self, r: StepResult, lr: float) -> None:
        values = torch.stack([r.loss, r.loss_main, r.loss_aux, r.grad_norm.to(r.loss.dtype)]).float()
        self.sums = values if self.sums is None else self.sums + values
        self.steps += 1
        self.samples += r.samples
        self.tokens += r.tokens
        self.lr = lr

    def record(self, step: int, d: Dist | None = None) -> dict:
        assert self.sums is not None and self.steps > 0
        sums = self.sums
        if d is not None and d.world > 1:
            # Each rank holds its shares of loss, main and aux (sums over the global counts): summed over
            # ranks they are the global values. The grad norm is global already.
            sums = torch.cat([sum_over_ranks(sums[:3], d), sums[3:]])
        loss, main, aux, gnorm = (sums / self.steps).tolist()  # host sync (log steps only)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        record = {"step": step, "loss": loss, "loss_main": main, "loss_aux": aux, "lr": self.lr,
                  "grad_norm": gnorm, "samples_per_s": self.samples / elapsed, "tokens_per_s": self.tokens / elapsed}
        if not self.with_aux:
            del record["loss_aux"]
        return record


def _log_measured_peak(trainer: Trainer, step: int) -> bool:
    """On CUDA, the allocator's peak so far beside the planner's prediction (once, at the first log step)."""
    if trainer.device.type != "cuda" or not trainer.is_main:
        return True
    measured = torch.cuda.max_memory_allocated(trainer.device)
    predicted = trainer.predicted_peak_bytes
    log.info("memory: measured peak %.2f GiB after %d steps (torch.cuda.max_memory_allocated)%s", measured / 2**30,
             step, f", predicted {predicted / 2**30:.2f} GiB ({measured / predicted:.2f}x)" if predicted else "")
    return True


def fit(trainer: Trainer) -> str:
    """Train to `train.max_steps`; returns "done", or "stopped" after a signal (checkpoint saved)."""
    cfg = trainer.cfg
    out, max_steps = cfg.run.output_dir, cfg.train.max_steps
    log_every, every = max(cfg.train.log_every, 1), cfg.checkpoint.every
    metrics = MetricsLog(out, cfg.log, start_step=trainer.step) if trainer.is_main else _NoMetrics()
    last_saved = trainer.step if trainer.step > 0 else None
    # The exact non-finite step: on CPU a per-step check costs nothing; "skip" must know before the
    # update. On CUDA with "error", the first bad step is recorded on the device and read at log and
    # checkpoint steps, so the step itself never syncs.
    sync_check = trainer.device.type == "cpu" or cfg.train.on_nonfinite == "skip"
    first_bad = torch.full((), -1, dtype=torch.long, device=trainer.device)
    from soar_fast.eval.preview import preview_every

    preview, sample_every = None, preview_every(cfg)
    if sample_every > 0 and trainer.step // sample_every < max_steps // sample_every:  # a preview step lies ahead
        from soar_fast.eval.preview import build_preview, render_preview

        preview = build_preview(cfg, trainer.device)
    bar = _progress(cfg.log.progress and trainer.is_main, trainer.step, max_steps)
    d = trainer.dist
    with_aux = cfg.soar.objective == "soar"
    window = Window(with_aux=with_aux)
    peak_logged = False
    status = "done"
    first_step = trainer.step + 1
    try:
        with GracefulStop() as stop:
            while trainer.step < max_steps:
                step = trainer.step + 1
                result = trainer.train_step()
                lr = trainer.lr
                bad = ~(torch.isfinite(result.loss) & torch.isfinite(result.grad_norm))
                if sync_check and bool(bad):  # host sync (CPU, or on_nonfinite = "skip")
                    if cfg.train.on_nonfinite == "error":
                        raise NonFiniteLossError(_nonfinite_message(step, out))
                    log.warning("step %d: non-finite loss, update skipped", step)
                    trainer.skip_update()
                else:
                    if not sync_check:
                        first_bad = torch.where(bad & (first_bad < 0), step, first_bad)
                    trainer.apply_update()
                    window.add(result, lr)
                trainer.step = step
                bar.update(1)
                if step == first_step and trainer.is_main:
                    _log_attention_ran(trainer)

                # Several ranks stop at the same step: they agree on a signal at log and checkpoint steps
                # (one flag all-reduce where the loop syncs anyway), so a signal ends the run within
                # `train.log_every` steps.
                stopping = stop.requested
                if d.world > 1:
                    agree = step % log_every == 0 or (every > 0 and step % every == 0) or step == max_steps
                    stopping = d.any_rank(stop.requested) if agree else False
                is_save = (every > 0 and step % every == 0) or step == max_steps or stopping
                # A log window never spans a checkpoint: a resumed run then logs exactly what the
                # uninterrupted run logged (the window's device sums are not part of the state).
                is_log = step % log_every == 0 or is_save
                if (is_log or is_save) and not sync_check and int(first_bad) >= 0:  # host sync
                    raise NonFiniteLossError(_nonfinite_message(int(first_bad), out))
                if is_log and window.steps:
                    if not peak_logged:
                        peak_logged = _log_measured_peak(trainer, step)
                    record = window.record(step, d)
                    metrics.log(record)
                    if trainer.is_main:
                        _show(bar, record)
                    window = Window(with_aux=with_aux)
                if preview is not None and step % sample_every == 0:
                    # Every rank runs the sampler (FSDP2 forwards are collectives); rank 0 writes the grid.
                    render_preview(unwrap(trainer.model), preview, step=step, output_dir=out,
                                   writer=getattr(metrics, "writer", None), write=trainer.is_main)
                    if cfg.eval.preview_ema:
                        with trainer.ema.swapped_in():
                            render_preview(unwrap(trainer.model), preview, step=step, output_dir=out, suffix="-ema",
                                           writer=getattr(metrics, "writer", None), write=trainer.is_main)
                if is_save and last_saved != step:
                    if trainer.sharded_checkpoints:
                        from soar_fast.train.resume import save_sharded_checkpoint

                        saved = save_sharded_checkpoint(trainer, out, step, total_limit=cfg.checkpoint.total_limit)
                    else:
                        ema = None if trainer.ema is None else (trainer.ema.full_tensors(d), trainer.ema.meta(step))
                        saved = save_checkpoint(out, step, transformer=unwrap(trainer.model), state=trainer.state_dict(),
                                                total_limit=cfg.checkpoint.total_limit, ema=ema).path
                    last_saved = step
                    metrics.plot()
                    log.info("saved %s", saved)
                if stopping:
                    status = "stopped"
                    log.warning("stopped by %s at step %d; resume with --resume", stop.signal_name or "a signal on "
                                "another rank", step)
                    break
    finally:
        bar.close()
        metrics.close()
    if status == "done":
        save_final(trainer)
        metrics.plot()
    return status


def save_final(trainer: Trainer) -> str:
    """`<output_dir>/transformer/` in `model.dtype` (checkpoints keep the fp32 masters), or with LoRA
    `<output_dir>/lora/`; and the EMA weights beside it as `transformer_ema/` (or `lora_ema/`): the same
    export with the EMA swapped in."""
    lora = info_of(trainer.model) is not None
    final = export_final(trainer, LORA_FOLDER if lora else "transformer")
    if trainer.ema is not None:
        with trainer.ema.swapped_in():
            export_final(trainer, EMA_ADAPTER_EXPORT if lora else EMA_EXPORT)
    return final


def export_final(trainer: Trainer, name: str) -> str:
    """The live weights as `<output_dir>/<name>/` in `model.dtype`, written atomically: a diffusers
    transformer folder, or with LoRA the adapter in diffusers' LoRA format, relative to the original base."""
    dtype = torch.bfloat16 if trainer.cfg.model.dtype == "bfloat16" else torch.float32
    final = os.path.join(trainer.cfg.run.output_dir, name)
    model = trainer.model
    lora = info_of(model) is not None
    if trainer.dist.has_group:
        # Gathered to rank 0 (a collective for FSDP2 shards), written there, renamed into place.
        from soar_fast.parallel.dcp import atomic_folder
        from soar_fast.parallel.export import export_adapter, export_transformer

        with atomic_folder(final, trainer.dist) as tmp:
            if lora:
                export_adapter(model, tmp, trainer.dist, dtype=dtype, base_relative=True)
            else:
                export_transformer(model, tmp, trainer.dist, dtype=dtype)
        return final
    if lora:
        save_folder_atomically(final, lambda tmp: save_adapter(unwrap(model), tmp, dtype=dtype,
                                                               base_relative_export=True))
    else:
        save_folder_atomically(final, lambda tmp: save_transformer(model, tmp, dtype=dtype))
    return final


class _NoMetrics:
    """What ranks other than 0 log and plot: nothing."""

    def log(self, record: dict) -> None:
        pass

    def plot(self) -> None:
        return None

    def close(self) -> None:
        pass


def _log_attention_ran(trainer: Trainer) -> None:
    """The start-up report names the attention backend installed; after one step, say what ran."""
    report = getattr(unwrap(trainer.model), "soar_accel_report", None)
    if report is not None:
        log.info("attention ran in the first step: %s", report.as_dict()["attention_ran"])


def _nonfinite_message(step: int, out: str) -> str:
    return (f"non-finite loss at step {step}; the last good checkpoint (if any) is in "
            f"{os.path.join(out, 'checkpoints')} (set train.on_nonfinite = \"skip\" to skip such steps)")


def _progress(enabled: bool, initial: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True,
                leave=True)


def _show(bar, record: dict) -> None:
    aux = f"aux {record['loss_aux']:.4f}  " if "loss_aux" in record else ""
    text = (f"step {record['step']}  loss {record['loss']:.4f}  main {record['loss_main']:.4f}  "
            f"{aux}lr {record['lr']:.2e}  {record['samples_per_s']:.1f} samples/s")
    if bar.disable:
        log.info(text)
    else:
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.1e}",
                        samples_s=f"{record['samples_per_s']:.1f}", refresh=True)
