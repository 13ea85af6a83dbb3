"""The toy experiment's protocol (docs/experiments.md, "SOAR vs SFT at toy scale"), fixed before the
final run: every number the experiment uses is here, for the full size and for the test suite's smoke size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Protocol:
    name: str
    # Data: the shapes set (soar_fast/toy) at `side` px, and the held-out prompts of the scores.
    train_images: int
    heldout_prompts: int
    side: int = 32
    data_seed: int = 0
    text_tokens: int = 16
    """T5 tokens per caption (the longest shapes caption is 11 words)."""
    # The model: SD3's transformer, narrow; the tiny text encoders; the toy autoencoder.
    layers: int = 4
    heads: int = 4
    head_dim: int = 32
    init_seed: int = 0
    # Pretraining the shared base (SFT).
    base_steps: int = 1200
    base_lr: float = 1e-3
    base_warmup: int = 100
    batch_size: int = 32
    # Post-training from the base: SFT and SOAR for the same steps, SFT also for SOAR's FLOPs.
    post_steps: int = 60
    post_lr: float = 3e-4
    post_checkpoints: int = 2
    """Checkpoints per post-training run (evenly spaced; the last is the end): the score-vs-step points."""
    seeds: tuple[int, ...] = (1, 2, 3)
    trajectory_length: int = 6
    cfg_scale: float = 4.5
    sampling_steps: int = 40
    # Scoring: the detector on images sampled at these CFG scales, `sampling_steps` Euler steps.
    score_cfgs: tuple[float, ...] = (4.5, 1.0)
    image_seed: int = 1000
    diagnose_samples: int = 32
    diagnose_sigmas: tuple[float, ...] = (0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)
    workers: int = 2
    """Runs trained at once (one CPU thread each)."""
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


FULL = Protocol(name="full", train_images=3000, heldout_prompts=60)

# The test suite's size: every stage runs, nothing is meant to be learnt.
SMOKE = Protocol(name="smoke", train_images=24, heldout_prompts=6, layers=1, heads=2, head_dim=16,
                 base_steps=3, base_warmup=0, batch_size=4, post_steps=2, post_checkpoints=1, seeds=(1,),
                 trajectory_length=2, sampling_steps=3, diagnose_samples=4, diagnose_sigmas=(0.9, 0.5))

PROTOCOLS = {p.name: p for p in (FULL, SMOKE)}
