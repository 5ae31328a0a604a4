"""The command line on bad input: one line naming the option, exit status 2, no traceback; output
paths checked before any work; results printed before they are written; a full disk in one line."""
import errno
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mdm_ext import cli, generate, reproduce, train
from mdm_ext.data import write_tokens
from test_files import overwrite_tensor_bytes, unwritable_folder

# Small runs, so that a line the command wrongly accepts still ends quickly.
TRAIN = "train --out {out} --steps 2 --length 16 --batch-size 2 --eval-batches 1 --warmup 1"
# The run of the checkpoint fixture; a command with these settings resumes it.
TRAIN_RUN = ("train --data {tokens} --vocab-size 16 --steps 2 --length 16 --batch-size 2 --eval-batches 1 "
             "--warmup 1 --eval-every 2")
SAMPLE = "sample --out {out}/samples.pt --num-samples 2 --batch-size 2 --length 8"
TINY = ("--vocab 15 --length 8 --samples 8 --ancestral-samples 4 --steps 4 16 --parallel 2 --bias-vocab 64 "
        "--bias-draws 100 --train-steps 2 --train-batch 4 --no-progress")
DEMO = "demo --out {out} " + TINY
REPRODUCE = "reproduce --device cpu --out {out} " + TINY

# (the option the error must name, the command line)
BAD_COMMAND_LINES = [
    # train: data
    ("--markov", TRAIN + " --markov 0"),
    ("--markov", TRAIN + " --markov 1"),
    ("--markov", TRAIN + " --markov -5"),
    ("--vocab-size", TRAIN + " --data {tokens} --vocab-size -5"),
    ("--vocab-size", TRAIN + " --data {tokens} --vocab-size 0"),
    ("--vocab-size", TRAIN + " --data {tokens}"),
    ("--vocab-size", TRAIN + " --markov 8 --vocab-size 16"),
    ("--data", TRAIN + " --data {missing} --vocab-size 16"),
    ("--data", TRAIN + " --data {folder} --vocab-size 16"),
    ("--data", TRAIN + " --data {empty} --vocab-size 16"),
    ("--data", TRAIN + " --data {odd} --vocab-size 16"),
    ("--data", TRAIN + " --data {tokens} --vocab-size 16 --dtype int64"),
    ("--length", TRAIN + " --data {tokens} --vocab-size 16 --length 100000"),
    ("--eval-data", TRAIN + " --data {tokens} --vocab-size 16 --eval-data {missing}"),
    ("--eval-data", TRAIN + " --data {tokens} --vocab-size 16 --eval-data {odd}"),
    ("--eval-data", TRAIN + " --eval-data {tokens}"),
    ("--text", TRAIN + " --text {missing}"),
    ("--text", TRAIN + " --text {folder}"),
    ("--text", TRAIN + " --text {binary}"),
    ("--text", TRAIN + " --text {empty}"),
    ("--text", TRAIN + " --text {two_bytes}"),
    ("--text", TRAIN + " --text {short_text} --length 64"),
    # train: the configuration
    ("--lr", TRAIN + " --lr inf"),
    ("--lr", TRAIN + " --lr nan"),
    ("--lr", TRAIN + " --lr 0"),
    ("--lr", TRAIN + " --lr -1"),
    ("--lr", TRAIN + " --lr fast"),
    ("--steps", TRAIN + " --steps 0"),
    ("--steps", TRAIN + " --steps -3"),
    ("--steps", TRAIN + " --steps 1.5"),
    ("--batch-size", TRAIN + " --batch-size 0"),
    ("--length", TRAIN + " --length 0"),
    ("--length", TRAIN + " --length -1"),
    ("--warmup", TRAIN + " --warmup -1"),
    ("--min-lr-ratio", TRAIN + " --min-lr-ratio 1.5"),
    ("--min-lr-ratio", TRAIN + " --min-lr-ratio nan"),
    ("--ema-decay", TRAIN + " --ema-decay 1"),
    ("--ema-decay", TRAIN + " --ema-decay -0.5"),
    ("--dropout", TRAIN + " --dropout 1"),
    ("--grad-clip", TRAIN + " --grad-clip -1"),
    ("--grad-clip", TRAIN + " --grad-clip inf"),
    ("--weight-decay", TRAIN + " --weight-decay nan"),
    ("--weight-decay", TRAIN + " --weight-decay -1"),
    ("--eval-every", TRAIN + " --eval-every 0"),
    ("--eval-batches", TRAIN + " --eval-batches 0"),
    ("--checkpoint-every", TRAIN + " --checkpoint-every 0"),
    ("--seed", TRAIN + " --seed -1"),
    ("--model", TRAIN + " --model huge"),
    ("--objective", TRAIN + " --objective discrete"),
    ("--device", TRAIN + " --device cuda:99"),
    ("--device", TRAIN + " --device tpu"),
    ("--device", TRAIN + " --device meta"),
    # train: --out
    ("--out", TRAIN.replace("{out}", "{file}")),
    ("--out", TRAIN.replace("{out}", "{file}/sub")),
    ("--out", TRAIN.replace("{out}", "{unwritable}/run")),
    ("--out", TRAIN_RUN + " --out {corrupt_run}"),
    ("--out", TRAIN_RUN + " --out {run} --lr 0.01"),
    # sample
    ("--checkpoint", SAMPLE + " --checkpoint {missing}"),
    ("--checkpoint", SAMPLE + " --checkpoint {folder}"),
    ("--checkpoint", SAMPLE + " --checkpoint {garbage}"),
    ("--checkpoint", SAMPLE + " --checkpoint {corrupt_run}/checkpoint.pt"),
    ("--checkpoint", SAMPLE + " --checkpoint {samples}"),
    ("--markov", SAMPLE + " --markov 0"),
    ("--markov", SAMPLE + " --markov 1"),
    ("--num-samples", SAMPLE + " --num-samples 0"),
    ("--num-samples", SAMPLE + " --num-samples -1"),
    ("--batch-size", SAMPLE + " --batch-size 0"),
    ("--length", SAMPLE + " --length 0"),
    ("--length", SAMPLE + " --checkpoint {run}/checkpoint.pt --length 1000"),
    ("--steps", SAMPLE + " --sampler ancestral --steps 0"),
    ("--steps", SAMPLE + " --sampler confidence --steps 1 --block-length 4"),
    ("--schedule", SAMPLE + " --sampler ancestral --schedule cubic"),
    ("--tokens-per-step", SAMPLE + " --tokens-per-step 0"),
    ("--order", SAMPLE + " --order 3"),
    ("--temperature", SAMPLE + " --temperature -1"),
    ("--temperature", SAMPLE + " --temperature nan"),
    ("--temperature", SAMPLE + " --temperature inf"),
    ("--top-p", SAMPLE + " --top-p 0"),
    ("--top-p", SAMPLE + " --top-p 1.5"),
    ("--top-p", SAMPLE + " --top-p nan"),
    ("--top-k", SAMPLE + " --top-k 0"),
    ("--block-length", SAMPLE + " --sampler confidence --block-length 0"),
    ("--seed", SAMPLE + " --seed -1"),
    ("--language-seed", SAMPLE + " --language-seed -1"),
    ("--sampler", SAMPLE + " --sampler autoregressive"),
    ("--sampler", SAMPLE + " --checkpoint {run}/checkpoint.pt --sampler autoregressive"),
    ("--device", SAMPLE + " --device cuda:99"),
    ("--out", SAMPLE.replace("{out}/samples.pt", "{file}/sub.pt")),
    ("--out", SAMPLE.replace("{out}/samples.pt", "{folder}")),
    ("--out", SAMPLE.replace("{out}/samples.pt", "{unwritable}/samples.pt")),
    # demo and reproduce
    ("--out", DEMO.replace("{out}", "{file}")),
    ("--out", DEMO.replace("{out}", "{file}/sub")),
    ("--out", DEMO.replace("{out}", "{unwritable}/demo")),
    ("--vocab", DEMO + " --vocab 0"),
    ("--vocab", DEMO + " --vocab -5"),
    ("--common", DEMO + " --common 300"),
    ("--successors", DEMO + " --successors 10"),
    ("--tail-mass", DEMO + " --tail-mass 0"),
    ("--tail-mass", DEMO + " --tail-mass 2"),
    ("--tail-mass", DEMO + " --tail-mass nan"),
    ("--length", DEMO + " --length 1"),
    ("--samples", DEMO + " --samples 0"),
    ("--ancestral-samples", DEMO + " --ancestral-samples 0"),
    ("--steps", DEMO + " --steps"),
    ("--steps", DEMO + " --steps 0 16"),
    ("--parallel", DEMO + " --parallel 1"),
    ("--bias-vocab", DEMO + " --bias-vocab 0"),
    ("--bias-draws", DEMO + " --bias-draws -1"),
    ("--train-steps", DEMO + " --train-steps -1"),
    ("--train-batch", DEMO + " --train-batch 0"),
    ("--train-lr", DEMO + " --train-lr inf"),
    ("--train-lr", DEMO + " --train-lr 0"),
    ("--seed", DEMO + " --seed -1"),
    ("--device", DEMO + " --device cuda:99"),
    ("--model", DEMO + " --model huge"),
    ("--out", REPRODUCE.replace("{out}", "{file}")),
    ("--vocab", REPRODUCE + " --vocab -5"),
    ("--samples", REPRODUCE + " --samples -1"),
]


def survey_files(folder: Path) -> dict[str, str]:
    """The files the bad command lines refer to, made in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_tokens(folder / "tokens.bin", np.arange(4001) % 16)  # 8002 bytes: no whole int64s
    for name, data in {"odd.bin": b"abc", "empty.txt": b"", "two_bytes.txt": b"ab", "short.txt": b"x" * 100,
                       "binary.txt": b"\xff\xfe" * 1000, "file.txt": b"a file", "garbage.pt": os.urandom(1000)}.items():
        (folder / name).write_bytes(data)
    (folder / "folder").mkdir(exist_ok=True)
    unwritable = unwritable_folder(folder)
    files = {"tokens": folder / "tokens.bin", "odd": folder / "odd.bin", "empty": folder / "empty.txt",
             "two_bytes": folder / "two_bytes.txt", "short_text": folder / "short.txt",
             "binary": folder / "binary.txt", "file": folder / "file.txt", "garbage": folder / "garbage.pt",
             "folder": folder / "folder", "missing": folder / "missing.bin", "unwritable": unwritable,
             "run": folder / "run", "corrupt_run": folder / "corrupt_run", "samples": folder / "samples.pt"}
    files = {name: str(path) for name, path in files.items()}
    cli.main(shlex.split(TRAIN_RUN.format(**files)) + ["--out", files["run"]])
    shutil.copytree(files["run"], files["corrupt_run"])
    overwrite_tensor_bytes(Path(files["corrupt_run"]) / "checkpoint.pt")
    cli.main(shlex.split(SAMPLE.format(out=folder)) + ["--markov", "8"])
    return files


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield survey_files(tmp_path_factory.mktemp("survey"))
    torch.set_num_threads(threads)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``mdm-ext argv``, in this process."""
    try:
        cli.main(argv)
        status = 0
    except SystemExit as exit:
        status = exit.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("flag, line", BAD_COMMAND_LINES,
                         ids=[f"{index}: {line.split()[0]} {flag}" for index, (flag, line) in enumerate(BAD_COMMAND_LINES)])
def test_bad_command_line_is_one_line_naming_the_option(files, tmp_path, capsys, flag, line):
    argv = shlex.split(line.format(out=tmp_path / "out", **files))
    status, out, err = run_cli(argv, capsys)
    assert status == 2, (status, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mdm-ext {argv[0]}: error: "), err
    assert flag in lines[0], err
    assert not (tmp_path / "out").exists()


UNUSABLE_OUT = [line for flag, line in BAD_COMMAND_LINES
                if flag == "--out" and any(f"--out {{{name}}}" in line for name in ("file", "unwritable", "folder"))]


@pytest.mark.parametrize("line", UNUSABLE_OUT)
def test_an_unusable_out_is_refused_before_any_work(files, capsys, monkeypatch, line):
    for module, name in ((reproduce, "reproduce"), (train, "train"), (train, "_datasets"),
                         (generate, "draw_batches")):
        monkeypatch.setattr(module, name, lambda *args, **kwargs: pytest.fail("the command started working"))
    status, _, err = run_cli(shlex.split(line.format(**files)), capsys)
    assert status == 2 and "--out" in err


def test_the_survey_covers_every_option_kind():
    assert len(BAD_COMMAND_LINES) >= 100
    assert {line.split()[0] for _, line in BAD_COMMAND_LINES} == {"train", "sample", "demo", "reproduce"}


def test_real_entry_point_prints_no_traceback_unless_debug(tmp_path):
    command = [sys.executable, "-m", "mdm_ext.cli", "train", "--lr", "inf", "--out", str(tmp_path)]
    plain = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and plain.stderr == "mdm-ext train: error: --lr must be a finite real number, got inf\n"
    debug = subprocess.run(command + ["--debug"], capture_output=True, text=True, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "lr must be a finite" in debug.stderr


def test_python_m_mdm_ext_train_is_mdm_ext_train(capsys):
    with pytest.raises(SystemExit) as exit:
        train.main(["--markov", "0"])
    assert exit.value.code == 2
    assert capsys.readouterr().err == "mdm-ext train: error: argument --markov: must be an int >= 2, got '0'\n"


def full_disk(monkeypatch, where: str) -> list[str]:
    """Makes every flush to disk of a file whose name contains ``where`` fail as on a full disk;
    returns the list of the paths it refused."""
    real_fsync, refused = os.fsync, []

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if where in Path(path).name:
            refused.append(path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return refused


def test_a_failed_write_of_the_report_loses_no_result(tmp_path, capsys, monkeypatch):
    full_disk(monkeypatch, "results.md")
    out = tmp_path / "demo"
    status, printed, err = run_cli(shlex.split(DEMO.format(out=out)) + ["--train-steps", "0", "--bias-draws", "0"],
                                   capsys)
    assert status == 1
    assert err == f"mdm-ext demo: error: could not write {out / 'results.md'}: No space left on device\n"
    assert "## 1. Float32 against float64 sampling" in printed and "| ancestral | float32 |" in printed
    assert not [path for path in out.iterdir() if path.suffix == ".tmp"]


def test_a_full_disk_is_one_line_and_the_rerun_reuses_the_data(tmp_path, capsys, monkeypatch):
    (tmp_path / "text.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    out = tmp_path / "run"
    line = [*shlex.split(TRAIN.format(out=out)), "--text", str(tmp_path / "text.txt"), "--steps", "4",
            "--checkpoint-every", "2", "--eval-every", "2"]
    refused = full_disk(monkeypatch, "checkpoint.pt")
    status, _, err = run_cli(line, capsys)
    assert status == 1 and refused
    # above it, the progress bar
    assert err.splitlines()[-1] == f"mdm-ext train: error: could not write {out / 'checkpoint.pt'}: No space left on device"
    data = {path: path.stat().st_mtime_ns for path in (out / "data").iterdir()}
    assert sorted(path.name for path in data) == ["text-eval.bin", "text-train.bin"]
    assert not list(out.rglob("*.tmp"))
    # the disk is still full for new data files: the rerun must not write them again
    monkeypatch.undo()
    full_disk(monkeypatch, ".bin.")
    status, printed, err = run_cli(line, capsys)
    assert status == 0, err
    assert {path: path.stat().st_mtime_ns for path in (out / "data").iterdir()} == data
    assert train.load_checked(out / "checkpoint.pt")["step"] == 4


def test_stale_temporaries_are_removed_on_start(tmp_path, capsys):
    import socket

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead, host = int(finished.stdout), socket.gethostname()
    out = tmp_path / "run"
    (out / "data").mkdir(parents=True)
    stale = [out / f".checkpoint.pt.{host}.{dead}.abcd1234.tmp", out / "data" / f".x.bin.{host}.{dead}.k2j4.tmp"]
    kept = [out / f".checkpoint.pt.{host}.{os.getpid()}.efgh5678.tmp",  # a write under way
            out / f".checkpoint.pt.elsewhere.{dead}.ijkl9012.tmp"]  # another machine's
    for path in stale + kept:
        path.write_bytes(b"half a file")
    status, _, err = run_cli(shlex.split(TRAIN.format(out=out)) + ["--lr", "0"], capsys)
    assert status == 2 and "--lr" in err
    assert [path.exists() for path in stale + kept] == [False, False, True, True]
