"""The trainer's random streams: one `torch.Generator` per (seed, rank, stream name).

Each stream is independent of the others, so adding a draw to one stream (or skipping a step's
draws) never shifts another, and every rank gets its own noise (the reference draws identical noise
on every GPU, docs/objective.md §8). The global torch RNG is not used by training, except by the
dropout of a LoRA adapter (`lora.dropout > 0`): `with_global=True` then seeds it per (seed, rank) and
carries its state (CPU, and the CUDA device's) in `state_dict`, so resume stays exact.
"""

from __future__ import annotations

import torch

from soar_fast.seeds import stream_seed

# soar: the step's `SoarDraws` (t0, z1, fracs, path noise); posterior: ε of z0 = mean + std·ε;
# dropout: per-sample conditional dropout; init: the preset's random weights.
STREAMS = ("soar", "posterior", "dropout")


class RngStreams:
    """Named generators on `device`, with `state_dict`/`load_state_dict` for exact resume."""

    def __init__(self, seed: int, rank: int, device: torch.device | str, names: tuple[str, ...] = STREAMS, *,
                 with_global: bool = False):
        self.device = torch.device(device)
        self.with_global = with_global
        self.generators: dict[str, torch.Generator] = {}
        for name in names:
            g = torch.Generator(device=self.device)
            g.manual_seed(stream_seed(seed, rank, name))
            self.generators[name] = g
        if with_global:
            torch.manual_seed(stream_seed(seed, rank, "global"))  # every device's default generator

    def __getitem__(self, name: str) -> torch.Generator:
        return self.generators[name]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{name: uint8 CPU tensor}: loadable with `torch.load(weights_only=True)` or safetensors."""
        state = {name: g.get_state().cpu() for name, g in self.generators.items()}
        if self.with_global:
            state["global"] = torch.get_rng_state()
            if self.device.type == "cuda":
                state["global_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.generators) - set(state))
        if missing:
            raise KeyError(f"checkpoint has no RNG state for stream(s) {', '.join(missing)}")
        for name, g in self.generators.items():
            g.set_state(state[name].to(torch.uint8).cpu())
        if self.with_global:
            if "global" not in state:
                raise KeyError("checkpoint has no state of the global RNG (lora.dropout > 0 needs it: the run that "
                               "wrote it had no LoRA dropout)")
            torch.set_rng_state(state["global"].to(torch.uint8).cpu())
            if self.device.type == "cuda" and "global_cuda" in state:
                torch.cuda.set_rng_state(state["global_cuda"].to(torch.uint8).cpu(), self.device)
