"""Folders and files that appear whole or not at all: write under a temporary name, flush, rename into
place.

A leaf (standard library only), shared by the one-process checkpoints (`train/checkpoint.py`), the
sharded ones (`parallel/dcp.py`) and the generated data sets (`data/demo.py`, `toy/shapes_set.py`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def _fsync_tree(path: str) -> None:
    """Flush every file and folder under `path` to disk, so a power cut after the rename cannot
    leave a complete-looking checkpoint with empty files."""
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(root)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_folder(tmp: str, final: str, tag: str) -> None:
    """Flush the finished folder `tmp` to disk and move it to `final`, replacing an older `final`."""
    parent, name = os.path.split(os.path.normpath(final))
    _fsync_tree(tmp)
    if os.path.exists(final):
        # A directory cannot be replaced by rename while non-empty: move the old one aside first.
        # Between these two renames `final` is missing, never half-written.
        old = os.path.join(parent, f".old-{name}-{tag}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(parent)


def save_folder_atomically(final: str, write: Callable[[str], object]) -> None:
    """Call `write(tmp_dir)`, then move `tmp_dir` to `final` (replacing an older `final`)."""
    parent, name = os.path.split(os.path.normpath(final))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    write(tmp)
    publish_folder(tmp, final, str(os.getpid()))


def write_if_changed(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically, and not at all when the file already holds it: several ranks
    may generate the same data set at once."""
    path = Path(path)
    if path.is_file() and path.read_bytes() == data:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
