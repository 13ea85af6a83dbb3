"""SD3/SD3.5 model parts: the transformer (`transformer.py`), text encoders (`text.py`), VAEs
(`vae.py`; the lossless toy autoencoder in `toy_vae.py`), complete tiny diffusers folders (`export.py`),
LoRA adapters (`lora.py`, their folders in `lora_io.py`) and where EMA weights live (`ema_folder.py`).
Import the submodule you need; this package imports nothing heavy by itself."""
