"""`accel.float8`: torchao float8 training on the transformer's large token-wise Linear layers.

Only Linear layers whose matmul M dimension is the token count (attention q/k/v/out projections,
the joint-context projections, both MLPs, the context embedder) and whose in/out features are both
≥ `min_features` and divisible by 16 are converted. The adaLN modulation Linears (`norm1.linear`,
`norm1_context.linear`, `norm_out.linear`) and the timestep/pooled embedders run on one row per
sample (M = B), where float8 casting costs more than it saves, and `proj_out` is narrow (p²·C = 64):
they stay in the training dtype. With LoRA (`lora.rank > 0`) the frozen base Linears inside the adapted
layers (`<name>.base_layer`) are converted and the adapter's rank-r `lora_A`/`lora_B` branches stay in
the training dtype: their r-wide matmuls would pay float8's casts for nothing. Needs an sm_89+ GPU (Ada/Hopper float8 tensor cores) and should
be combined with `accel.compile` — torchao's eager float8 casts are separate kernels.
Recipes: `tensorwise` (fastest), `rowwise`, `rowwise_with_gw_hp` (more accurate; torchao names).
"""

from __future__ import annotations

import dataclasses
import logging

import torch

log = logging.getLogger(__name__)

# Sub-module names whose Linears see one row per sample (adaLN modulations, embedders) or are narrow
# (proj_out, a LoRA adapter's rank-r branches).
_SKIP_PARTS = ("norm1.", "norm1_context.", "norm_out", "time_text_embed", "proj_out", "pos_embed", ".lora_A.",
               ".lora_B.")


def float8_module_filter(min_features: int = 1024):
    """The `module_filter_fn(module, fqn)` used with `convert_to_float8_training`."""

    def keep(module: torch.nn.Module, fqn: str) -> bool:
        if not isinstance(module, torch.nn.Linear):
            return False
        if any(part in fqn for part in _SKIP_PARTS):
            return False
        n_in, n_out = module.in_features, module.out_features
        return n_in >= min_features and n_out >= min_features and n_in % 16 == 0 and n_out % 16 == 0

    return keep


def check_float8_supported(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError(f"accel.float8 = true needs a CUDA GPU with compute capability >= 8.9 (Ada/Hopper); "
                           f"the run is on {device}. Set accel.float8 = false.")
    cap = torch.cuda.get_device_capability(device)
    if cap < (8, 9):
        raise RuntimeError(f"accel.float8 = true needs compute capability >= 8.9; {torch.cuda.get_device_name(device)} "
                           f"is {cap[0]}.{cap[1]}. Set accel.float8 = false.")


def apply_float8(transformer: torch.nn.Module, recipe: str, device: torch.device | str, *,
                 min_features: int = 1024, fsdp_float8_all_gather: bool = False) -> str:
    """Swap the selected Linears for torchao `Float8Linear` in place; return a description.

    `fsdp_float8_all_gather`: FSDP2 all-gathers the weights already cast to float8 (half the bytes of
    bf16); torchao supports it for the tensorwise recipe, and the trainer then precomputes the scales
    after each optimizer step (`parallel.wrap.after_optimizer_step`)."""
    check_float8_supported(device)
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as e:  # pragma: no cover - torchao is a dependency
        raise RuntimeError(f"accel.float8 = true needs torchao.float8 ({e})") from e
    keep = float8_module_filter(min_features)
    selected = [name for name, m in transformer.named_modules() if keep(m, name)]
    config = Float8LinearConfig.from_recipe_name(recipe)
    if fsdp_float8_all_gather:
        config = dataclasses.replace(config, enable_fsdp_float8_all_gather=True)
    convert_to_float8_training(transformer, config=config, module_filter_fn=keep)
    desc = (f"float8 {recipe} on {len(selected)} Linear layers (min features {min_features}"
            f"{', float8 all-gather' if fsdp_float8_all_gather else ''})")
    log.info("float8: %s", desc)
    return desc
