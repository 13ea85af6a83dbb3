"""`soar-fast plan`: peak memory and cost of one training step, predicted on fake tensors."""

from .gpus import GPU, GPUS, gpu
from .step import RunShapes, StepPlan, plan_step, run_shapes

__all__ = ["GPU", "GPUS", "RunShapes", "StepPlan", "gpu", "plan_step", "run_shapes"]
