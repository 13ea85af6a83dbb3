"""Training: the step (`step.py`), the Trainer (`trainer.py`), the loop (`loop.py`), checkpoints,
optimizer and schedules, metrics, and the `soar-fast train` entry (`run.py`). Import submodules
directly; this package imports nothing heavy by itself."""
