"""Written files: whole or not at all, checksummed, their leftovers cleaned up, their paths checked
before any work."""
import errno
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mdm_ext import files
from mdm_ext.files import UnusableFile, check_output, checksum, load_checked, save_atomic


def overwrite_tensor_bytes(path: Path, count: int = 64) -> None:
    """Flips ``count`` bytes in the middle of the largest tensor record of a torch.save file
    (records are stored uncompressed: the local header is 30 bytes, the name and an extra field)."""
    with zipfile.ZipFile(path) as archive:
        record = max((info for info in archive.infolist() if "/data/" in info.filename),
                     key=lambda info: info.file_size)
    with open(path, "r+b") as file:
        file.seek(record.header_offset + 26)
        name_length, extra_length = np.frombuffer(file.read(4), dtype="<u2")
        start = record.header_offset + 30 + int(name_length) + int(extra_length) + record.file_size // 2
        file.seek(start)
        flipped = bytes(byte ^ 0xFF for byte in file.read(count))
        file.seek(start)
        file.write(flipped)


def a_state() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"step": 3, "model": {"weight": torch.randn(64, 32, generator=generator),
                                 "bias": torch.randn(32, generator=generator).bfloat16()},
            "history": [{"step": 0, "loss": 2.5}], "shape": (1, 2), "name": "tiny", "none": None}


def test_a_checkpoint_round_trips_and_plain_torch_load_reads_it(tmp_path):
    state = a_state()
    save_atomic(state, tmp_path / "state.pt")
    loaded = load_checked(tmp_path / "state.pt")
    assert loaded.keys() == state.keys() and checksum(loaded) == checksum(state)
    plain = torch.load(tmp_path / "state.pt", weights_only=True)
    assert plain[files.CHECKSUM_KEY] == checksum(state)


def test_64_overwritten_bytes_of_tensor_data_are_caught(tmp_path):
    path = tmp_path / "state.pt"
    save_atomic(a_state(), path)
    overwrite_tensor_bytes(path)
    # torch.load alone takes the damaged tensor for a good one
    damaged = torch.load(path, weights_only=True)
    assert not torch.equal(damaged["model"]["weight"], a_state()["model"]["weight"])
    with pytest.raises(UnusableFile, match="is corrupt: its contents do not match the SHA-256"):
        load_checked(path)


def test_the_checksum_covers_every_value():
    base = checksum(a_state())
    changes = [
        lambda s: s["model"]["weight"].__setitem__((5, 5), s["model"]["weight"][5, 5] + 1e-6),
        lambda s: s.update(model={**s["model"], "weight": s["model"]["weight"].double()}),
        lambda s: s.update(model={**s["model"], "weight": s["model"]["weight"].reshape(32, 64)}),
        lambda s: s["history"][0].update(loss=2.5000001),
        lambda s: s.update(shape=[1, 2]),
        lambda s: s.update(step=3.0),
        lambda s: s.update(name="tiny "),
        lambda s: s.update(extra=None),
    ]
    for change in changes:
        state = a_state()
        change(state)
        assert checksum(state) != base
    assert checksum(a_state()) == base
    with pytest.raises(TypeError, match="set"):
        checksum({"x": {1, 2}})


def test_files_that_are_not_checked_checkpoints_are_refused(tmp_path):
    torch.save({"model": torch.ones(3)}, tmp_path / "plain.pt")
    with pytest.raises(UnusableFile, match="has no checksum"):
        load_checked(tmp_path / "plain.pt")
    (tmp_path / "garbage.pt").write_bytes(os.urandom(1000))
    with pytest.raises(UnusableFile, match="is not a readable checkpoint"):
        load_checked(tmp_path / "garbage.pt")
    save_atomic(a_state(), tmp_path / "whole.pt")
    data = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnusableFile, match="is not a readable checkpoint"):
        load_checked(tmp_path / "half.pt")
    with pytest.raises(FileNotFoundError):
        load_checked(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="dict without the key"):
        save_atomic({files.CHECKSUM_KEY: 1}, tmp_path / "x.pt")


def test_a_full_disk_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    save_atomic(a_state(), path)
    good = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=f"could not write {path}: No space left on device") as raised:
        save_atomic({"other": torch.zeros(5)}, path)
    assert raised.value.errno == errno.ENOSPC
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    return int(finished.stdout)


def test_only_the_leftovers_of_dead_processes_here_are_removed(tmp_path):
    host, dead = socket.gethostname(), dead_pid()
    (tmp_path / "sub").mkdir()
    stale = [tmp_path / f".a.pt.{host}.{dead}.x1.tmp", tmp_path / "sub" / f".b.bin.{host}.{dead}.x2.tmp"]
    kept = [tmp_path / f".a.pt.{host}.{os.getpid()}.x3.tmp",  # a write under way
            tmp_path / f".a.pt.other-host.{dead}.x4.tmp",  # another machine's
            tmp_path / ".a.pt.tmp", tmp_path / "a.pt"]  # not ours
    for path in stale + kept:
        path.write_bytes(b"x")
    assert files.remove_stale_temporaries(tmp_path, "b.bin") == []  # b.bin's is in sub/
    assert files.remove_stale_temporaries(tmp_path, "a.pt") == stale[:1]
    assert files.remove_stale_temporaries(tmp_path) == stale[1:]
    assert all(path.exists() for path in kept)


def test_a_killed_write_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    # the child dies inside write(), between creating its temporary file and renaming it
    script = ("import os, signal; from mdm_ext.files import write_atomic; "
              f"write_atomic({str(tmp_path / 'x.bin')!r}, lambda f: os.kill(os.getpid(), signal.SIGKILL))")
    subprocess.run([sys.executable, "-c", script])
    leftovers = list(tmp_path.glob(".x.bin.*.tmp"))
    assert len(leftovers) == 1
    files.write_atomic(tmp_path / "x.bin", lambda f: f.write(b"whole"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


def unwritable_folder(tmp_path: Path) -> Path:
    locked = tmp_path / "locked"
    locked.mkdir(parents=True)
    locked.chmod(0o555)
    # root writes into any folder: then a folder of sysfs, where nobody can create files
    return locked if not os.access(locked, os.W_OK) else Path("/sys")


def test_output_paths_are_checked(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    for path, folder in ((tmp_path / "new" / "deeper", True), (tmp_path / "folder", True),
                         (tmp_path / "new" / "x.pt", False), (tmp_path / "file", False)):
        check_output(path, folder=folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]  # nothing created
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_output(tmp_path / "file", folder=True)
    with pytest.raises(ValueError, match="is a folder, not a file"):
        check_output(tmp_path / "folder", folder=False)
    for folder in (True, False):
        with pytest.raises(ValueError, match=f"lies under {tmp_path / 'file'}, which is a file"):
            check_output(tmp_path / "file" / "sub" / "x.pt", folder=folder)
        with pytest.raises(ValueError, match="cannot be written: Permission denied"):
            check_output(unwritable_folder(tmp_path / str(folder)) / "out", folder=folder)
