"""The shapes benchmark: a compositional data set with GenEval's categories and a detector that
scores images against them without weights (docs/experiments.md, "The shapes benchmark")."""

from soar_fast.toy.detector import Detection, detect
from soar_fast.toy.palette import COLORS, PALETTE, SHAPES
from soar_fast.toy.render import render
from soar_fast.toy.scoring import evaluate, score
from soar_fast.toy.shapes_set import write_heldout_prompts, write_shapes_set
from soar_fast.toy.split import heldout_prompts, is_heldout
from soar_fast.toy.tags import CATEGORIES, caption

__all__ = ["CATEGORIES", "COLORS", "PALETTE", "SHAPES", "Detection", "caption", "detect", "evaluate",
           "heldout_prompts", "is_heldout", "render", "score", "write_heldout_prompts", "write_shapes_set"]
