"""SD3/SD3.5 model parts: the transformer (`transformer.py`), text encoders (`text.py`), VAEs
(`vae.py`; the lossless toy autoencoder in `toy_vae.py`), and complete tiny diffusers folders
(`export.py`). Import the submodule you need; this package imports nothing heavy by itself."""
