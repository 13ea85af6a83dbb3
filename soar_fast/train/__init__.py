"""Training: the step (`step.py`, its named phases in `phases.py`), the Trainer (`trainer.py`), the loop
(`loop.py`), checkpoints (`checkpoint.py`; sharded ones in `resume.py`), the EMA (`ema.py`), optimizer and
schedules, metrics, and the `soar-fast train` and `soar-fast profile` entries (`run.py`, `profile.py`).
Import submodules directly; this package imports nothing heavy by itself."""
