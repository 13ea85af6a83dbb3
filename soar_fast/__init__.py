"""soar-fast: exact SOAR post-training for rectified-flow MMDiT models, fast."""

__version__ = "0.1.0"
