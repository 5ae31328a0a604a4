"""Files that appear whole or not at all."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

# mkstemp creates files readable by their owner only; the written file gets the mode a plain
# open() would give it (read once: os.umask can only be read by setting it)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Calls ``write`` on a temporary file beside ``path``, flushes it to disk and renames it
    over ``path`` (creating the folder if needed): readers never see half a file, and a crash or
    a failed write at any point leaves the previous file whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        os.unlink(tmp_path)
        raise
    # the rename itself reaches the disk only with the folder
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` through :func:`write_atomic` (load it with
    ``torch.load(path, weights_only=True)``)."""
    write_atomic(path, lambda file: torch.save(obj, file))
