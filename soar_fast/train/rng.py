"""The trainer's random streams: one `torch.Generator` per (seed, rank, stream name).

Each stream is independent of the others, so adding a draw to one stream (or skipping a step's
draws) never shifts another, and every rank gets its own noise (the reference draws identical noise
on every GPU, docs/objective.md §8). The global torch RNG is never used by training.
"""

from __future__ import annotations

import torch

from soar_fast.seeds import stream_seed

# soar: the step's `SoarDraws` (t0, z1, fracs, path noise); posterior: ε of z0 = mean + std·ε;
# dropout: per-sample conditional dropout; init: the preset's random weights.
STREAMS = ("soar", "posterior", "dropout")


class RngStreams:
    """Named generators on `device`, with `state_dict`/`load_state_dict` for exact resume."""

    def __init__(self, seed: int, rank: int, device: torch.device | str, names: tuple[str, ...] = STREAMS):
        self.device = torch.device(device)
        self.generators: dict[str, torch.Generator] = {}
        for name in names:
            g = torch.Generator(device=self.device)
            g.manual_seed(stream_seed(seed, rank, name))
            self.generators[name] = g

    def __getitem__(self, name: str) -> torch.Generator:
        return self.generators[name]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{name: uint8 CPU tensor}: loadable with `torch.load(weights_only=True)` or safetensors."""
        return {name: g.get_state().cpu() for name, g in self.generators.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.generators) - set(state))
        if missing:
            raise KeyError(f"checkpoint has no RNG state for stream(s) {', '.join(missing)}")
        for name, g in self.generators.items():
            g.set_state(state[name].to(torch.uint8).cpu())
