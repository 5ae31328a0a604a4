"""Files that appear whole or not at all, checkpoints that carry their own checksum, and output
paths checked before any work is spent on what they will hold."""
from __future__ import annotations

import glob
import hashlib
import io
import os
import pickle
import socket
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

import torch
from torch import Tensor

# mkstemp creates files readable by their owner only; the written file gets the mode a plain
# open() would give it (read once: os.umask can only be read by setting it)
_UMASK = os.umask(0o022)
os.umask(_UMASK)
# A temporary file is named .NAME.HOST.PID.RANDOM.tmp: a later start can tell the leftovers of
# a killed write (its process is gone) from a write still under way in another process.
_HOST = socket.gethostname()
CHECKSUM_KEY = "sha256"


class UnusableFile(ValueError):
    """A file that exists but cannot be used (corrupt, or not what is asked for); the message
    starts with its ``path``."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path = Path(path)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Calls ``write`` on a temporary file beside ``path``, flushes it to disk and renames it
    over ``path`` (creating the folder if needed): readers never see half a file, and a crash or
    a failed write at any point leaves the previous file whole. Leftovers of killed writes of
    ``path`` are removed first. An OSError (a full disk, say) is raised again as one that names
    ``path``: "could not write PATH: REASON"."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent, path.name)
        fd, tmp_path = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}.{os.getpid()}.",
                                        suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)
            with os.fdopen(fd, "wb") as file:
                write(file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp_path, path)
        except BaseException:
            Path(tmp_path).unlink(missing_ok=True)
            raise
        # the rename itself reaches the disk only with the folder
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as error:
        raise OSError(error.errno, f"could not write {path}: {error.strerror or error}") from error


def remove_stale_temporaries(folder: str | os.PathLike, name: Optional[str] = None) -> list[Path]:
    """Removes the temporary files that killed atomic writes left in ``folder``: those of the
    file ``name``, or with ``name=None`` those of every file in ``folder`` and in its folders
    (one level down: a run's data folder, not a whole tree an --out may hold). Only files of
    processes of this machine that no longer run are touched. Returns them."""
    folder = Path(folder)
    patterns = [f".{glob.escape(name)}.*.tmp"] if name is not None else [".*.tmp", "*/.*.tmp"]
    candidates = [path for pattern in patterns for path in sorted(folder.glob(pattern))]
    removed = []
    for candidate in candidates:
        parts = candidate.name.rsplit(".", 3)  # [.NAME.HOST, PID, RANDOM, tmp]
        if (len(parts) == 4 and parts[0].endswith(f".{_HOST}") and parts[1].isdigit()
                and not _running(int(parts[1]))):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def checksum(state: Any) -> str:
    """SHA-256 of a nest of dicts, lists and tuples of tensors, numbers, strings and None: of
    every tensor's dtype, shape and bytes and every other value, in order."""
    digest = hashlib.sha256()
    _feed(digest, state)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)}:".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)}:".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{'list' if isinstance(value, list) else 'tuple'} {len(value)}:".encode())
        for item in value:
            _feed(digest, item)
    elif value is None or isinstance(value, (bool, int, float, str)):
        text = repr(value)
        digest.update(f"{type(value).__name__} {len(text)}:{text}".encode())
    else:
        raise TypeError(f"checksum: a {type(value).__name__} is not a tensor, number, string or container")


def save_atomic(state: dict, path: str | os.PathLike) -> None:
    """``torch.save`` of ``state`` and its :func:`checksum` (under CHECKSUM_KEY) to ``path``
    through :func:`write_atomic`. Read it back with :func:`load_checked`; ``torch.load(path,
    weights_only=True)`` reads it too, the checksum as one more key."""
    if not isinstance(state, dict) or CHECKSUM_KEY in state:
        raise ValueError(f"state must be a dict without the key {CHECKSUM_KEY!r}")
    stamped = {**state, CHECKSUM_KEY: checksum(state)}

    def write(file: BinaryIO) -> None:
        # serialised in memory first: torch.save reports a write that fails on a full disk
        # as "unexpected pos", a plain file write raises the OSError that says why
        buffer = io.BytesIO()
        torch.save(stamped, buffer)
        file.write(buffer.getbuffer())

    write_atomic(path, write)


def load_checked(path: str | os.PathLike) -> dict:
    """The state :func:`save_atomic` wrote to ``path``, loaded on the CPU with
    ``weights_only=True`` (no code runs), after checking its checksum. Raises UnusableFile for
    a file that does not load, has no checksum or does not match it; OSError if unreadable."""
    with open(path, "rb") as file:  # a missing or unreadable file is an OSError
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # torch's text here suggests weights_only=False: not ours
            raise UnusableFile(path, "is not a readable checkpoint (it does not load as weights only)") from None
        except Exception as error:  # RuntimeError, EOFError, OSError of a cut file ...
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UnusableFile(path, f"is not a readable checkpoint ({reason[:200]})") from None
    if not isinstance(state, dict) or CHECKSUM_KEY not in state:
        raise UnusableFile(path, "has no checksum: it was not written by mdm_ext's save_atomic")
    stored = state.pop(CHECKSUM_KEY)
    if checksum(state) != stored:
        raise UnusableFile(path, "is corrupt: its contents do not match the SHA-256 checksum stored in it "
                                 "(a damaged copy or a disk error); restore a good copy or remove it")
    return state


def check_output(path: str | os.PathLike, *, folder: bool) -> None:
    """Raises ValueError, starting with ``path``, unless ``path`` can be written as a folder
    (``folder=True``) or as a file: not the other kind where it exists, and under a folder this
    process can create files in (tried with a probe file, which also catches read-only disks)."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise ValueError(f"{path} is a {'file' if folder else 'folder'}, not a {'folder' if folder else 'file'}")
    ancestor = path if folder else path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{path} lies under {ancestor}, which is a file")
    try:
        fd, probe = tempfile.mkstemp(dir=ancestor, prefix=".mdm_ext-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise ValueError(f"{path} cannot be written: {error.strerror or error} in {ancestor}") from None
