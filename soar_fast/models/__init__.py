"""SD3/SD3.5 model parts: the transformer (`transformer.py`), text encoders (`text.py`), VAE
(`vae.py`), a complete tiny diffusers folder (`export.py`), and where EMA weights live (`ema_folder.py`). Import the submodule you need;
this package imports nothing heavy by itself."""
