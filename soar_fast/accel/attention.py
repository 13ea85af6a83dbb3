"""`accel.attention`: which kernel runs the MMDiT's joint attention.

`auto` takes FlashAttention-3 (`flash_attn_interface`, Hopper) when it imports on an sm_90 GPU,
else cuDNN attention on sm_90+ (fastest SDPA backend on Hopper since torch 2.5), else torch's own
SDPA choice. An explicit choice is honoured strictly: if that backend cannot run the inputs the
SDPA call fails and says why, instead of silently falling back. The backend in use is returned
(and logged) so a benchmark row always names it.

The processor keeps q/k/v in [B, S, H, D] until the kernel call: FA3 takes that layout directly,
SDPA gets a transposed view (no copy). It is installed on every `Attention` of the transformer
(`attn` of the joint blocks and `attn2` of SD3.5's dual-attention blocks).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

AttentionChoice = Literal["auto", "fa3", "sdpa_cudnn", "sdpa_flash", "sdpa"]


@dataclass(frozen=True)
class AttentionBackend:
    """The resolved backend: `name` for logs, `sdpa_backends` (None = torch's choice), `fa3` kernel."""

    name: str
    sdpa_backends: tuple | None = None
    fa3: Callable | None = None

    @property
    def traceable(self) -> bool:
        """Can torch.compile(fullgraph=True) trace through it? SDPA yes; FA3 only when its build
        registers its kernels as torch ops (newer flash-attention 3); older ones are opaque calls."""
        return self.fa3 is None or _fa3_registers_torch_ops()


def _import_fa3() -> Callable | None:
    try:
        from flash_attn_interface import flash_attn_func  # FlashAttention-3 (hopper/ build)
    except Exception:  # noqa: BLE001 - ImportError, or an OSError/RuntimeError from a build for another GPU/ABI
        return None
    return flash_attn_func


def _fa3_registers_torch_ops() -> bool:
    return any(n.startswith("flash_attn_3::") for n in torch._C._dispatch_get_all_op_names())


def _capability(device: torch.device) -> tuple[int, int]:
    if device.type != "cuda" or not torch.cuda.is_available():
        return (0, 0)
    return torch.cuda.get_device_capability(device)


def resolve_attention(choice: AttentionChoice, device: torch.device | str, *,
                      compiling: bool = False) -> AttentionBackend:
    """Map `accel.attention` to a backend for `device`; raise naming the key when it cannot run.

    `compiling`: `auto` skips an FA3 build that torch.compile cannot trace (cuDNN SDPA instead)."""
    from torch.nn.attention import SDPBackend

    device = torch.device(device)
    cap = _capability(device)
    if choice == "sdpa":
        return AttentionBackend("sdpa")
    if choice == "fa3":
        fa3 = _import_fa3()
        if fa3 is None or cap < (9, 0):
            raise RuntimeError(
                f"accel.attention = 'fa3' needs `flash_attn_interface` (FlashAttention-3) importable and an sm_90 "
                f"GPU; found device {device} (capability {cap[0]}.{cap[1]}), import "
                f"{'ok' if fa3 is not None else 'failed'}. Use 'auto' to fall back to SDPA.")
        return AttentionBackend("fa3", fa3=fa3)
    if choice in ("sdpa_cudnn", "sdpa_flash"):
        if device.type != "cuda":
            raise RuntimeError(f"accel.attention = {choice!r} needs a CUDA device, got {device}. Use 'auto' or 'sdpa'.")
        backend = SDPBackend.CUDNN_ATTENTION if choice == "sdpa_cudnn" else SDPBackend.FLASH_ATTENTION
        return AttentionBackend(choice, sdpa_backends=(backend,))
    if choice != "auto":
        raise ValueError(f"accel.attention must be one of auto, fa3, sdpa_cudnn, sdpa_flash, sdpa; got {choice!r}")
    if device.type != "cuda":
        return AttentionBackend("sdpa")
    if cap >= (9, 0):
        fa3 = _import_fa3()
        if fa3 is not None and (not compiling or AttentionBackend("fa3", fa3=fa3).traceable):
            return AttentionBackend("fa3", fa3=fa3)
        # cuDNN first, then torch's usual order for inputs cuDNN rejects (fp32, odd head dims).
        return AttentionBackend("sdpa_cudnn", sdpa_backends=(
            SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH))
    return AttentionBackend("sdpa")


_SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def compute_dtype(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.dtype | None:
    """The one dtype attention runs in: the autocast dtype when autocast is on for q's device, else
    None (inputs as they come). Under bf16 autocast with fp32 master weights, diffusers' RMS qk-norm
    returns q and k in fp32 while v (a Linear output) is bf16; without this cast FA3 (fp16/bf16 only)
    never ran and SDPA took the fp32 math path for mixed inputs."""
    device = q.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return None


class AttentionCalls:
    """Counts of the kernel each attention call actually ran, keyed "<kernel> <dtype>".

    Eager calls name the SDPA backend torch picked (`torch._fused_sdp_choice`, under the same
    backend list as the call); a call traced by torch.compile is counted on every run (dynamo replays
    the side effect) as "<backend> (compiled)", because the choice is made inside the graph.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def summary(self) -> str:
        return ", ".join(f"{k}×{n}" for k, n in sorted(self.counts.items())) or "no calls yet"


def _sdpa_choice(qt, kt, vt) -> str:
    try:
        from torch.nn.attention import SDPBackend

        return SDPBackend(torch._fused_sdp_choice(qt, kt, vt, None, 0.0, False)).name.lower()
    except Exception:  # noqa: BLE001 - a private probe: a torch without it still attends
        return "sdpa (unprobed)"


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: AttentionBackend,
           calls: AttentionCalls | None = None) -> torch.Tensor:
    """Non-causal attention of q/k/v [B, S, H, D] → [B, S, H, D] on `backend`, in `compute_dtype`."""
    dtype = compute_dtype(q, k, v)
    if dtype is not None:
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    dtypes = {_SHORT.get(t.dtype, str(t.dtype)) for t in (q, k, v)}
    tag = dtypes.pop() if len(dtypes) == 1 else f"q={_SHORT.get(q.dtype)} k={_SHORT.get(k.dtype)} v={_SHORT.get(v.dtype)}"
    compiling = torch.compiler.is_compiling()
    if backend.fa3 is not None and q.dtype in (torch.float16, torch.bfloat16) and q.dtype == k.dtype == v.dtype:
        if calls is not None:
            calls.add(f"fa3 {tag}")
        out = backend.fa3(q, k, v, causal=False)
        # FA3 builds differ: some return (out, softmax_lse), newer ones out only.
        return out[0] if isinstance(out, tuple) else out
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if backend.sdpa_backends is None:
        if calls is not None:
            calls.add(f"{'sdpa (compiled)' if compiling else _sdpa_choice(qt, kt, vt)} {tag}")
        out = F.scaled_dot_product_attention(qt, kt, vt, dropout_p=0.0, is_causal=False)
    else:
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel(list(backend.sdpa_backends), set_priority=len(backend.sdpa_backends) > 1):
            if calls is not None:
                calls.add(f"{backend.name + ' (compiled)' if compiling else _sdpa_choice(qt, kt, vt)} {tag}")
            out = F.scaled_dot_product_attention(qt, kt, vt, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2)


class SoarJointAttnProcessor:
    """diffusers' `JointAttnProcessor2_0` semantics with a selectable kernel and [B, S, H, D] layout."""

    def __init__(self, backend: AttentionBackend) -> None:
        self.backend = backend
        self.calls = AttentionCalls()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        assert attention_mask is None, "SD3 joint attention takes no mask"
        batch, n_img = hidden_states.shape[0], hidden_states.shape[1]
        heads = attn.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, heads, x.shape[-1] // heads)

        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states))
        # RMSNorm/LayerNorm over the head dim: layout-independent, so [B, S, H, D] is fine here.
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if encoder_hidden_states is not None:
            cq = split(attn.add_q_proj(encoder_hidden_states))
            ck = split(attn.add_k_proj(encoder_hidden_states))
            cv = split(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                cq = attn.norm_added_q(cq)
            if attn.norm_added_k is not None:
                ck = attn.norm_added_k(ck)
            q, k, v = torch.cat([q, cq], dim=1), torch.cat([k, ck], dim=1), torch.cat([v, cv], dim=1)

        # Left in attention's dtype (diffusers casts back to q's): the output projection runs under the
        # same autocast, so the fp32 round trip would only add two passes.
        out = attend(q, k, v, self.backend, self.calls).reshape(batch, -1, heads * q.shape[-1])
        if encoder_hidden_states is not None:
            out, context = out[:, :n_img], out[:, n_img:]
            if not attn.context_pre_only:
                context = attn.to_add_out(context)
        out = attn.to_out[1](attn.to_out[0](out))
        return (out, context) if encoder_hidden_states is not None else out


def attention_calls(transformer: torch.nn.Module) -> str:
    """What the attention layers actually ran so far, counted per call ("fa3 bf16×96", ...); diffusers'
    own processor (`sdpa`) is not instrumented and says so."""
    calls = {id(p.calls): p.calls for p in transformer.attn_processors.values()
             if isinstance(p, SoarJointAttnProcessor)}
    if not calls:
        return "diffusers processor (not counted)"
    merged = AttentionCalls()
    for c in calls.values():
        for key, n in c.counts.items():
            merged.counts[key] = merged.counts.get(key, 0) + n
    return merged.summary()


def apply_attention(transformer: torch.nn.Module, choice: AttentionChoice, device: torch.device | str, *,
                    compiling: bool = False) -> str:
    """Install the backend for `choice` on every attention layer; return the backend's name.

    `sdpa` leaves diffusers' own processor in place (bit-identical to an untouched model). An
    explicit `fa3` that torch.compile cannot trace is named "fa3 (untraceable)" so the caller
    compiles with graph breaks allowed.
    """
    backend = resolve_attention(choice, device, compiling=compiling)
    if backend.name != "sdpa":
        transformer.set_attn_processor(SoarJointAttnProcessor(backend))
    name = backend.name if backend.traceable or not compiling else "fa3 (untraceable)"
    log.info("attention backend: %s (accel.attention = %s)", name, choice)
    return name
