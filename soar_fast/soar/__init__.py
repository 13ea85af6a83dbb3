"""The SOAR objective, eager (docs/objective.md): the semantics every fast path is checked against.

Public contract: `SigmaGrid`, `rollout_step`, `aux_points`, `AuxPoints`. The rest is the internal map
of docs/internal-api.md, used by the trainer and the kernels.
"""

from .aux import AuxPoints, aux_points
from .draws import SoarDraws, draw
from .grid import SigmaGrid
from .layout import AuxLayout, TimestepMode, aux_layout
from .loss import LossParts, soar_loss, weighted_mse
from .reference import Model, reference_loss
from .rollout import RolloutKind, cfg_combine, rollout_step
from .timesteps import Scheme, loss_weight, sample_t

__all__ = [
    "AuxLayout", "AuxPoints", "LossParts", "Model", "RolloutKind", "Scheme", "SigmaGrid", "SoarDraws", "TimestepMode",
    "aux_layout", "aux_points", "cfg_combine", "draw", "loss_weight", "reference_loss", "rollout_step",
    "sample_t", "soar_loss", "weighted_mse",
]
