"""LoRA on the SD3 transformer: `[lora]` → a peft `LoraConfig` → diffusers' `add_adapter`.

`apply_lora` is the trainer's build step: it checks the target names against the model, adds the
adapter (in fp32, so PiSSA/OLoRA compute their residual base in fp32), freezes every base parameter
and stores it in the training compute dtype, and leaves the adapter's parameters fp32 and trainable.
What is needed to rebuild the same adapted model elsewhere (resume, export, sampling) is a `LoraInfo`,
kept on the model as `soar_lora` and written beside the adapter weights (`models/lora_io.py`).

The adapter's initial values are drawn from their own seed (not the global RNG of the moment), so
every rank starts from the same adapter, and a rebuild for resume or export reproduces the residual
base of PiSSA's randomized SVD bit for bit.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from soar_fast.config import LoraConfig
from soar_fast.config_io import ConfigError

ADAPTER = "default"
"""The peft adapter name the trainer adds (peft's default; it never appears in saved keys)."""

# What diffusers' SD3 LoRA script (train_dreambooth_lora_sd3.py) targets by default: the joint attention
# of both streams (SD3.5-M's extra image self-attention `attn2` is not in it), and the feed-forward
# Linears of both streams.
ATTENTION = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
             "attn.add_v_proj", "attn.to_add_out")
MLP = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")
TARGET_PRESETS: dict[str, tuple[str, ...]] = {"attention": ATTENTION, "mlp": MLP, "attention+mlp": ATTENTION + MLP}

_BLOCK_PREFIX = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.\d+\.")


@dataclass
class LoraInfo:
    """The adapter's settings and the base it was trained on: enough to rebuild the adapted model."""

    rank: int
    alpha: float
    dropout: float
    target_modules: list[str]
    """Resolved module names (presets expanded)."""
    init: str
    init_seed: int
    """Seed of the adapter's initial values (and of PiSSA's randomized SVD)."""
    base: dict[str, Any] = field(default_factory=dict)
    """`preset`, `path`, `seed` (random weights of a preset) and `dims` (the data's widths)."""

    @property
    def moves_base(self) -> bool:
        """PiSSA/OLoRA move part of each base weight into the adapter: the frozen base is a residual."""
        return moves_base(self.init)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def moves_base(init: str) -> bool:
    return init.startswith("pissa") or init == "olora"


def resolve_targets(names: list[str] | tuple[str, ...]) -> list[str]:
    """Presets expanded, duplicates dropped, order kept."""
    out: list[str] = []
    for name in names:
        for n in TARGET_PRESETS.get(name.strip(), (name.strip(),)):
            if n not in out:
                out.append(n)
    return out


def _matches(module_name: str, target: str) -> bool:
    # peft's rule for a list of names: the full name, or a suffix after a dot.
    return module_name == target or module_name.endswith("." + target)


def linear_names(model: torch.nn.Module) -> list[str]:
    """The model's Linear layers by name with the block index dropped, deduplicated, sorted."""
    return sorted({_BLOCK_PREFIX.sub("", n) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def check_targets(targets: list[str] | tuple[str, ...], model: torch.nn.Module) -> list[str]:
    """The resolved targets, or ConfigError naming `lora.target_modules`, each name that matches no
    Linear layer, and the Linear layer names that exist."""
    resolved = resolve_targets(targets)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    unmatched = [t for t in resolved if not any(_matches(n, t) for n in linears)]
    # A preset names layers some architectures lack (to_add_out is absent from a context_pre_only
    # block, attn2 from a model without dual attention): only a preset matching nothing at all is wrong.
    wrong = [t for t in unmatched if not any(t in TARGET_PRESETS.get(p.strip(), ()) for p in targets)]
    if not wrong and len(unmatched) == len(resolved):
        wrong = unmatched
    if wrong:
        raise ConfigError(f"lora.target_modules: {', '.join(repr(w) for w in wrong)} match{'es' if len(wrong) == 1 else ''}"
                          f" no Linear layer of the transformer; its Linear layers are: {', '.join(linear_names(model))}"
                          f" (or a preset: {', '.join(TARGET_PRESETS)})")
    return [t for t in resolved if t not in unmatched]


def peft_config(info: LoraInfo):
    """The peft `LoraConfig` of `info`."""
    from peft import LoraConfig as PeftLoraConfig

    init: bool | str = {"true": True, "false": False}.get(info.init, info.init)
    return PeftLoraConfig(r=info.rank, lora_alpha=info.alpha, lora_dropout=info.dropout,
                          target_modules=list(info.target_modules), init_lora_weights=init)


def lora_info(lora_cfg: LoraConfig, model: torch.nn.Module, *, init_seed: int,
              base: dict[str, Any] | None = None) -> LoraInfo:
    """`[lora]` resolved against `model` (ConfigError for a target name it does not have)."""
    targets = check_targets(lora_cfg.target_modules, model)
    alpha = float(lora_cfg.alpha) if lora_cfg.alpha is not None else float(lora_cfg.rank)
    return LoraInfo(rank=int(lora_cfg.rank), alpha=alpha, dropout=float(lora_cfg.dropout), target_modules=targets,
                    init=lora_cfg.init, init_seed=int(init_seed), base=dict(base or {}))


def is_adapter_parameter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def apply_lora(model: torch.nn.Module, info: LoraInfo, *, base_dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Add the adapter of `info` to `model` (fp32, in place), freeze the base and store it in
    `base_dtype`; returns `model`. PiSSA/OLoRA's initial adapter is kept (CPU) as `soar_lora_initial`
    for exports relative to the original base (`lora_io.base_relative`)."""
    for p in model.parameters():
        if p.dtype != torch.float32:  # (a module-level `.to(dtype)` makes diffusers warn)
            p.data = p.data.float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(info.init_seed)
        model.add_adapter(peft_config(info), adapter_name=ADAPTER)
    for name, p in model.named_parameters():
        adapter = is_adapter_parameter(name)
        p.requires_grad_(adapter)
        if not adapter and p.dtype != base_dtype:
            p.data = p.data.to(base_dtype)
    object.__setattr__(model, "soar_lora", info)  # not a parameter or buffer: invisible to state dicts
    if info.moves_base:
        object.__setattr__(model, "soar_lora_initial", {k: v.detach().cpu().clone()
                                                        for k, v in adapter_state(model).items()})
    return model


def info_of(model: torch.nn.Module) -> LoraInfo | None:
    """The `LoraInfo` of an adapted model (or of the module inside DDP), None for a plain one."""
    return getattr(model, "soar_lora", None) or getattr(getattr(model, "module", None), "soar_lora", None)


def adapter_key(name: str) -> str | None:
    """Module state-dict key → the adapter's saved key (diffusers/peft format: no adapter name), or
    None for a base key. `blocks.0.attn.to_q.lora_A.default.weight` → `blocks.0.attn.to_q.lora_A.weight`."""
    for part in ("lora_A", "lora_B"):
        marker = f".{part}.{ADAPTER}."
        if marker in name:
            return name.replace(marker, f".{part}.")
    return None


def module_key(saved: str) -> str:
    """The inverse of `adapter_key`."""
    for part in ("lora_A", "lora_B"):
        marker = f".{part}."
        if marker in saved:
            return saved.replace(marker, f".{part}.{ADAPTER}.")
    raise KeyError(f"{saved}: not a LoRA key (no .lora_A. or .lora_B.)")


def adapter_state(model_or_state: torch.nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter's tensors in saved-key form, from an unwrapped module or a (gathered) state dict."""
    state = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    out = {}
    for k, v in state.items():
        key = adapter_key(k.removeprefix("_orig_mod."))
        if key is not None:
            out[key] = v.detach()
    return out


def skeleton(config: dict[str, Any]) -> torch.nn.Module:
    """An SD3 transformer of `config` on the meta device (no memory, no weights): what `check_targets`
    needs before anything is loaded."""
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        return SD3Transformer2DModel.from_config(config)
