"""Sampling and evaluation: the SD3 flow-matching sampler, prompt sets, scorers, `sample`/`eval` commands.

Module map: `prompts` (the reference prompt formats), `partition` (exact row split over ranks and the
merge of per-rank results), `sampler` (CFG Euler on the scheduler's sigmas), `pipeline` (load base +
checkpoint, encode → sample → decode), `images` (PNG writing, contact sheets), `scorers/` (one file per
scorer behind one interface), `aggregate` (averages, GenEval task mean, summary table), `from_run` (what
sampling a soar-fast run takes from its config.toml), `sample` and `run` (the two commands), `preview` (the
training-time grid), `tiny_clip` (offline CLIP weights); `exposure` (exposure-bias math), `diagnose` (its
data and models), `diagnose_plot`, `diagnose_command`.
"""
