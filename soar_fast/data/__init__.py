"""Reference-format JSONL + image buckets, the generated demo set, and the embedding/latent cache.

The trainer's entry point is `soar_fast.data.build.build_source` (see docs/internal-api.md).
"""
