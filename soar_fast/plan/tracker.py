"""torch's own trackers (`torch.distributed._tools`), with the few gaps a SOAR step needs closed.

- `StepMemTracker` is `MemTracker` (or `FSDPMemTracker` for an FSDP2 model) plus the phase of the
  step at the peak. Three gaps closed (the third: frozen parameters, a LoRA run's base, take no
  gradient hook, which torch refuses on a tensor that does not require grad): (1) MemTracker refuses a second top-level call of the same
  module in one iteration ("multiple iterative calls"), and a SOAR step calls the transformer for the
  main, rollout and aux forwards: each top-level forward starts fresh *module* stats
  (`reset_mod_stats`, through `each_call_fresh`), which leaves the device totals, and so the peak, untouched; module-wise peaks
  are not kept at all (their per-op update dominated the run time); (2) it knows no
  phases beyond its module states: the peak is labelled with the innermost `phase(name)` of the step
  (`soar_fast.train.profile`) that is open when it is reached, "optimizer" inside `optimizer.step`.
- `Roofline` is `RuntimeEstimator`'s roofline model (`operator-level-cost-model`: per op, the larger
  of its FLOPs at the matrix peak and its bytes at the memory bandwidth) with two gaps closed: it
  asks the *current* CUDA device for its peaks (none on a CPU, where it refuses to run), so the peaks
  here come from a named `GPU`; and torch's FLOP table has no entry for the CPU flash attention ops
  that a fake step on the CPU dispatches to, so those are counted with the SDPA formulas. It also
  prints its total on exit; this one stays quiet.
- `SACEstimator` is not used: selective checkpointing runs as the trainer applies it (torch's
  selective-checkpoint contexts, `soar_fast/accel/checkpointing.py`), so MemTracker sees exactly what
  it saves and recomputes; the estimator answers another question (which ops to save under a budget).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.distributed._tools import MemTracker, RuntimeEstimator
from torch.distributed._tools.mem_tracker import _TOTAL_KEY
from torch.utils._runtime_estimation import _IGNORE_OPS, get_num_bytes
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

from soar_fast.plan.gpus import GPU

aten = torch.ops.aten

# MemTracker's and FSDPMemTracker's categories (by their names) -> the planner's split. All-gathered
# (unsharded) parameters count as parameters, unsharded gradients and reduce-scatter buffers as gradients.
SPLIT = {
    "params": ("Parameter", "Buffer", "Sharded Param", "Unsharded Param", "All Gather"),
    "grads": ("Gradient", "Sharded Grad", "Unsharded Grad", "Reduce Scatter"),
    "optimizer": ("Optstate", "OptState"),
    "activations": ("Activation", "Temp", "Other", "Inputs"),
}


class _NoHook:
    """Stands in for the gradient-hook handles of a frozen parameter (MemTracker removes them on exit)."""

    def remove(self) -> None:
        pass


_NO_HOOK = _NoHook()


def _phase_tracking(base: type) -> type:
    """`base` (MemTracker or FSDPMemTracker) with the step's phases and repeated top-level forwards."""

    class Tracker(base):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._phase_stack: list[str] = []
            self.peak_phase = "start"
            self.phase_peaks: dict[str, int] = {}

        @contextlib.contextmanager
        def phase(self, name: str) -> Iterator[None]:
            self._phase_stack.append(name)
            try:
                yield
            finally:
                self._phase_stack.pop()

        @property
        def current_phase(self) -> str:
            if self._in_opt:
                return "optimizer"
            return self._phase_stack[-1] if self._phase_stack else "other"

        def _update_peak_stats(self, peak_state: Any) -> None:
            # MemTracker also walks every tracked module's local peak after every op: O(modules) per op,
            # 80% of an SD3.5-M plan's time (measured: 228 of 285 s). Only the device peak is used here.
            name = self.current_phase
            for dev, snap in self._curr_mem_snap.items():
                total = snap[_TOTAL_KEY]
                if self.phase_peaks.get(name, 0) < total:
                    self.phase_peaks[name] = total
                if self._peak_mem.get(dev, 0) < total:
                    self._peak_mem[dev] = total
                    self._peak_mem_snap[dev] = dict(snap)
                    self.peak_phase = name

        def _track_module_params_and_buffers(self, module: Any, install_grad_hooks: bool = True) -> tuple[int, int]:
            for p in module.parameters():
                if not p.requires_grad:
                    self._param_to_grad_hook_handles.setdefault(p, (_NO_HOOK, _NO_HOOK))
            return super()._track_module_params_and_buffers(module, install_grad_hooks)

        def track_resident(self, *tensors: torch.Tensor) -> None:
            """Tensors that live through the step beside the optimizer state (the EMA), counted as optimizer
            state; also under FSDPMemTracker, whose own `track_external` does nothing."""
            for t in tensors:
                self._update_and_maybe_create_winfos(t, self._ref_class.OPT)

        def each_call_fresh(self, fn: Any) -> Any:
            """`fn` (a top-level model call) starting fresh module stats each time it is called."""
            def call(*args: Any, **kwargs: Any) -> Any:
                self.reset_mod_stats()
                return fn(*args, **kwargs)
            return call

        def peak_split(self) -> dict[str, int]:
            """Bytes per category at the peak (one device: the fake step's)."""
            snaps = list(self.get_tracker_snapshot("peak").values())
            snap = snaps[0] if snaps else {}
            by_name = {getattr(k, "value", k): v for k, v in snap.items()}
            split = {k: sum(by_name.get(t, 0) for t in types) for k, types in SPLIT.items()}
            split["total"] = snap.get(_TOTAL_KEY, 0)
            return split

    Tracker.__name__ = Tracker.__qualname__ = f"Step{base.__name__}"
    return Tracker


StepMemTracker = _phase_tracking(MemTracker)


def step_fsdp_mem_tracker(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Any:
    """FSDPMemTracker (an FSDP2 model's all-gathered/sharded parameters tracked as such) with phases."""
    from torch.distributed._tools import FSDPMemTracker

    return _phase_tracking(FSDPMemTracker)(model, optimizer)


def _cpu_flash_flops(func: Any, args: tuple, out: Any) -> int | None:
    if func is aten._scaled_dot_product_flash_attention_for_cpu.default:
        q, k, v = args[:3]
        return sdpa_flop_count(q.shape, k.shape, v.shape)
    if func is aten._scaled_dot_product_flash_attention_for_cpu_backward.default:
        grad_out, q, k, v = args[:4]
        return sdpa_backward_flop_count(grad_out.shape, q.shape, k.shape, v.shape)
    return None


class Roofline(RuntimeEstimator):
    """Per-op roofline time of everything run inside it on `gpu`, plus the FLOPs counted."""

    def __init__(self, gpu: GPU) -> None:
        super().__init__()
        self.gpu = gpu
        self.flops = 0
        self.matmul_seconds = 0.0
        self._estimate = self._gpu_roofline
        self._estimate_mode_type = "operator-level-cost-model"

    def _gpu_roofline(self, func: Any, args: tuple, kwargs: dict | None) -> tuple[Any, float]:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in _IGNORE_OPS:
            return out, 0.0
        tensors_in = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        tensors_out = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        nbytes = sum(get_num_bytes(t) for t in tensors_in + tensors_out)
        flops = _cpu_flash_flops(func, args, out)
        if flops is None and packet in flop_registry:
            flops = flop_registry[packet](*args, **kwargs, out_val=out)
        seconds = nbytes / self.gpu.bytes_per_s
        if flops:
            low = any(t.dtype in (torch.bfloat16, torch.float16) for t in tensors_out)
            compute = flops / (self.gpu.bf16_flops if low else self.gpu.fp32_flops)
            self.flops += int(flops)
            self.matmul_seconds += compute
            seconds = max(seconds, compute)
        return out, seconds * 1e3  # RuntimeEstimator keeps milliseconds

    def __exit__(self, *args: object) -> None:
        torch.utils._python_dispatch.TorchDispatchMode.__exit__(self, *args)
        self._mod_tracker.clear_user_hooks()
        self._mod_tracker.__exit__()

    @property
    def seconds(self) -> float:
        return self.total_runtime / 1e3
