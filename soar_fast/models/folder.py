"""What a `model.path` folder must hold, checked from the file system alone (no torch), so an
incomplete folder is one line before any weight is read.

A diffusers SD3 folder holds `transformer/` and `scheduler/`; training without `data.cache` (and
`cache`, `sample`, `eval`) also encodes, so it needs the text encoders, their tokenizers and the VAE.
A bare transformer folder (`config.json` + weights, e.g. an exported `transformer/`) is accepted
where nothing is encoded; its scheduler is SD3's default.
"""

from __future__ import annotations

from pathlib import Path

from soar_fast.config_io import ConfigError

ENCODER_PARTS = ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3")


class ModelFolderError(ConfigError):
    """`model.path` (or a checkpoint folder) is missing something; the message names what."""


def missing_parts(path: str, *, encodes: bool) -> list[str]:
    """The parts of `path` that are missing, as `sub/file` names; [] when complete."""
    root = Path(path)
    if not root.is_dir():
        return ["the folder itself"]
    if not (root / "transformer").is_dir():
        if (root / "config.json").is_file() and not encodes:
            return []  # a bare transformer folder
        return ["transformer/config.json"] + ([] if not encodes else _encoding_parts(root))
    missing = [] if (root / "transformer" / "config.json").is_file() else ["transformer/config.json"]
    if not (root / "scheduler" / "scheduler_config.json").is_file():
        missing.append("scheduler/scheduler_config.json")
    return missing + (_encoding_parts(root) if encodes else [])


def _encoding_parts(root: Path) -> list[str]:
    missing = [f"{sub}/" for sub in ENCODER_PARTS if not (root / sub).is_dir()]
    if not (root / "vae" / "config.json").is_file():
        missing.append("vae/config.json")
    return missing


def check_model_folder(path: str | None, *, encodes: bool, why: str = "") -> None:
    """Raise ModelFolderError naming every missing part of `path` (None: a preset, nothing to check);
    `why` says what needs the parts."""
    if not path:
        return
    missing = missing_parts(path, encodes=encodes)
    if missing == ["the folder itself"]:
        raise ModelFolderError(f"model.path={path}: no such folder")
    if missing:
        reason = f"; {why}" if why else ""
        raise ModelFolderError(f"model.path={path}: missing {', '.join(missing)}{reason} (README: model.path)")
