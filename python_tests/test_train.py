"""The training loop: it learns, resumes bit for bit (also after a SIGKILL), never replaces a good
checkpoint with a broken one, and keeps torchrun ranks in lockstep.

Runs use one thread: the tiny model gains nothing from two, and a shared machine's other jobs
slow an oversubscribed run down tenfold. Runs compared bit for bit use the same thread count.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mdm_ext import cli
from mdm_ext import train as training
from mdm_ext.data import TokenDataset, write_tokens
from mdm_ext.language import MarkovLanguage
from mdm_ext.train import TrainConfig, lr_factor, load_model, train

VOCAB = 16
TESTS = Path(__file__).parent
# A low-entropy chain (0.71 nats per token against log 16 = 2.77 for a unigram guess), so that
# learning shows within a few dozen steps.
LANGUAGE = MarkovLanguage.random(VOCAB, seed=0, zipf_exponent=3.0)
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, TokenDataset]:
    folder = tmp_path_factory.mktemp("markov")
    datasets = {}
    for name, seed in (("train", 0), ("eval", 1)):
        write_tokens(folder / f"{name}.bin",
                     LANGUAGE.sample(64, 512, generator=torch.Generator().manual_seed(seed)).flatten())
        datasets[name] = TokenDataset(folder / f"{name}.bin", vocab_size=VOCAB)
    return datasets


def tiny_config(**changes) -> TrainConfig:
    return replace(TrainConfig(length=32, batch_size=8, steps=6, lr=3e-3, warmup=2, eval_every=3,
                               eval_batches=1, checkpoint_every=3, ema_decay=0.9, device="cpu"), **changes)


def assert_identical(a, b, where: str = "") -> None:
    """a and b hold the same values: tensors bit for bit, containers item by item."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (item_a, item_b) in enumerate(zip(a, b)):
            assert_identical(item_a, item_b, f"{where}/{index}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def assert_same_run(a: Path, b: Path) -> None:
    """Checkpoints a and b hold the same step, weights, moving average and optimizer state."""
    state_a, state_b = (torch.load(path / training.CHECKPOINT_NAME, weights_only=True) for path in (a, b))
    for part in ("step", "model", "ema", "optimizer", "scheduler", "eval_history"):
        assert_identical(state_a[part], state_b[part], part)


@pytest.mark.parametrize("causal", [False, True])
def test_loss_decreases(data, causal):
    config = tiny_config(steps=80, eval_every=40, eval_batches=2, causal=causal)
    result = train(config, data["train"], eval_dataset=data["eval"])
    first, last = result.eval_history[0], result.eval_history[-1]
    assert (first["step"], last["step"], result.step, len(result.losses)) == (0, 80, 80, 80)
    assert last["loss"] < first["loss"] - 0.5, result.eval_history
    assert last["ema_loss"] < first["ema_loss"] - 0.3, result.eval_history
    assert result.checkpoint is None and result.mask_id == VOCAB
    assert result.model.config.vocab_size == VOCAB + 1 and result.model.config.causal == causal


@pytest.mark.parametrize("objective", ["time_agnostic", "continuous"])
def test_resumed_run_matches_an_uninterrupted_one(data, tmp_path, objective):
    # dropout makes every step draw from torch's global generator too
    config = tiny_config(objective=objective, dropout=0.1)
    whole = train(replace(config, out=str(tmp_path / "whole")), data["train"], eval_dataset=data["eval"])
    resumed_config = replace(config, out=str(tmp_path / "resumed"))
    first_leg = train(resumed_config, data["train"], eval_dataset=data["eval"], until=3)
    assert first_leg.step == 3 and len(first_leg.losses) == 3
    # another process would start from scratch; scrambling the global generator stands in for that
    torch.manual_seed(12345)
    second_leg = train(resumed_config, data["train"], eval_dataset=data["eval"])
    assert second_leg.step == 6 and second_leg.losses == whole.losses[3:]
    for (name, a), b in zip(whole.model.state_dict().items(), second_leg.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert_same_run(tmp_path / "whole", tmp_path / "resumed")
    assert second_leg.eval_history == whole.eval_history
    assert [record["step"] for record in whole.eval_history] == [0, 3, 6]


def test_resume_rejects_a_changed_config(data, tmp_path):
    config = tiny_config(out=str(tmp_path), steps=4)
    train(config, data["train"], until=2)
    with pytest.raises(ValueError, match="lr"):
        train(replace(config, lr=1e-3), data["train"])
    # evaluation and checkpoint cadence may change
    assert train(replace(config, eval_every=1, checkpoint_every=1), data["train"]).step == 4


def test_failed_write_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch):
    config = tiny_config(out=str(tmp_path), checkpoint_every=1)
    train(config, data["train"], until=2)
    checkpoint = tmp_path / training.CHECKPOINT_NAME
    good = checkpoint.read_bytes()

    def full_disk(state, file):
        file.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        train(config, data["train"])
    monkeypatch.undo()
    assert checkpoint.read_bytes() == good
    assert [path.name for path in tmp_path.iterdir()] == [training.CHECKPOINT_NAME]
    assert train(config, data["train"]).step == 6


def test_killed_run_resumes_exactly(data, tmp_path):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    command = [sys.executable, "-m", "mdm_ext.train", "--data", str(data["train"].path),
               "--vocab-size", str(VOCAB), "--eval-data", str(data["eval"].path), "--out", str(killed),
               "--length", "32", "--batch-size", "8", "--steps", "2000", "--lr", "3e-3", "--warmup", "2",
               "--eval-every", "1000", "--eval-batches", "1", "--checkpoint-every", "1", "--ema-decay", "0.9"]
    process = subprocess.Popen(command, env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (killed / training.CHECKPOINT_NAME).exists():
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint after 60 s"
            time.sleep(0.05)
        time.sleep(0.5)  # a few more steps, so that the kill likely lands during a write
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()
    step = torch.load(killed / training.CHECKPOINT_NAME, weights_only=True)["step"]
    assert 1 <= step < 1000
    # the same config as the command's, resumed in this process and run uninterrupted beside it
    config = tiny_config(steps=2000, eval_every=1000, checkpoint_every=1, out=str(killed))
    train(config, data["train"], eval_dataset=data["eval"], until=step + 2)
    train(replace(config, out=str(whole), checkpoint_every=1000), data["train"],
          eval_dataset=data["eval"], until=step + 2)
    assert_same_run(killed, whole)
    # a write the kill interrupted left a temporary file; the next write removed it
    assert sorted(path.name for path in killed.iterdir()) == [training.CHECKPOINT_NAME]


def test_a_diverging_run_stops_and_keeps_the_good_checkpoint(data, tmp_path, monkeypatch):
    config = tiny_config(out=str(tmp_path), checkpoint_every=1, eval_every=1)
    real_loss, calls = training._loss, []

    def nan_at_step_3(network, x, config, mask_id):
        loss = real_loss(network, x, config, mask_id)
        calls.append(network.training)
        return loss * float("nan") if calls.count(True) == 3 else loss

    monkeypatch.setattr(training, "_loss", nan_at_step_3)
    train(config, data["train"], until=2)
    checkpoint = tmp_path / training.CHECKPOINT_NAME
    good = checkpoint.read_bytes()
    with pytest.raises(training.TrainingDiverged,
                       match=f"the training loss is nan at step 3; {checkpoint} still holds step 2"):
        train(config, data["train"])
    assert checkpoint.read_bytes() == good


def test_command_line_refuses_to_save_a_diverged_run(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["train", "--data", str(data["train"].path), "--vocab-size", str(VOCAB), "--out", str(tmp_path),
                  "--lr", "1e10", "--steps", "40", "--eval-every", "5", "--length", "32", "--batch-size", "8",
                  "--eval-batches", "1"])
    assert exit.value.code == 1
    message = capsys.readouterr().err.splitlines()[-1]
    assert message.startswith("mdm-ext train: error: training diverged: the training loss is nan at step ")
    assert message.endswith("no checkpoint was written. Try a lower lr (now 1e+10), a longer warmup (now 100) "
                            "or gradient clipping (grad_clip)")
    assert not (tmp_path / training.CHECKPOINT_NAME).exists()


def test_generated_data_is_written_once(tmp_path, monkeypatch):
    language = MarkovLanguage.random(8, seed=0)
    path = tmp_path / "markov.bin"
    drawn = np.array(training._markov_tokens(path, language, chains=2, seed=1).tokens)
    written = path.stat().st_mtime_ns
    monkeypatch.setattr(MarkovLanguage, "sample", lambda *args, **kwargs: pytest.fail("drawn again"))
    assert np.array_equal(training._markov_tokens(path, language, chains=2, seed=1).tokens, drawn)
    assert path.stat().st_mtime_ns == written
    monkeypatch.undo()
    # not what an earlier run wrote (replaced, not cut in place: the memory maps above still read it)
    write_tokens(path, drawn[:50])
    assert np.array_equal(training._markov_tokens(path, language, chains=2, seed=1).tokens, drawn)


@pytest.mark.slow
def test_torchrun_ranks_stay_identical(data, tmp_path):
    config = tiny_config(steps=4, checkpoint_every=2, eval_every=2, dropout=0.1, out=str(tmp_path))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               str(TESTS / "ddp_worker.py"), str(data["train"].path), json.dumps(asdict(config)),
               str(tmp_path)]
    finished = subprocess.run(command, env=ONE_THREAD, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1))
    assert_identical(rank0["model"], rank1["model"])
    assert all(torch.isfinite(p).all() for p in rank0["model"].values())
    assert rank0["losses"] != rank1["losses"]  # each rank trained on its own batches
    checkpoint = torch.load(tmp_path / training.CHECKPOINT_NAME, weights_only=True)
    assert (checkpoint["step"], checkpoint["world_size"]) == (4, 2)
    assert_identical(checkpoint["model"], rank0["model"])


@pytest.mark.parametrize("source", ["markov", "text"])
def test_command_line_trains_and_saves(tmp_path, source):
    parser = argparse.ArgumentParser()
    training.add_arguments(parser)
    if source == "text":
        (tmp_path / "text.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
        data_args, vocab_size = ["--text", str(tmp_path / "text.txt")], 256
    else:
        data_args, vocab_size = ["--markov", "8"], 8
    out = tmp_path / "out"
    training.run(parser.parse_args([*data_args, "--out", str(out), "--length", "16", "--batch-size", "4",
                                    "--steps", "3", "--warmup", "1", "--eval-every", "2"]))
    summary = json.loads((out / "result.json").read_text())
    assert summary["step"] == 3 and summary["mask_id"] == vocab_size
    assert [record["step"] for record in summary["eval_history"]] == [0, 2, 3]
    model = load_model(out / training.CHECKPOINT_NAME)
    assert model.config.vocab_size == vocab_size + 1 and not model.training
    x = torch.full((2, 16), vocab_size)
    assert model(x).shape == (2, 16, vocab_size + 1)


def test_gradients_are_clipped_to_grad_clip(data, tmp_path, monkeypatch):
    """Each step clips the global gradient norm to grad_clip (0: no clipping)."""
    real_clip = torch.nn.utils.clip_grad_norm_
    calls = []  # (norm before, max_norm, norm after)

    def recording_clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        total = real_clip(parameters, max_norm, *args, **kwargs)
        calls.append((float(total), max_norm, float(torch.nn.utils.get_total_norm([p.grad for p in parameters]))))
        return total
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    train(tiny_config(steps=2, grad_clip=1e-3, out=str(tmp_path / "clipped")), data["train"])
    assert [max_norm for _, max_norm, _ in calls] == [1e-3, 1e-3]
    assert all(before > 1e-3 and after <= 1e-3 * (1 + 1e-5) for before, _, after in calls)
    calls.clear()
    train(tiny_config(steps=2, grad_clip=0.0, out=str(tmp_path / "unclipped")), data["train"])
    assert calls == []


def test_learning_rate_warms_up_then_decays():
    config = TrainConfig(steps=100, warmup=10, min_lr_ratio=0.1)
    assert lr_factor(0, config) == pytest.approx(0.1) and lr_factor(9, config) == pytest.approx(1.0)
    assert lr_factor(55, config) == pytest.approx(0.55)
    assert lr_factor(100, config) == pytest.approx(0.1)
    factors = [lr_factor(step, config) for step in range(10, 101)]
    assert factors == sorted(factors, reverse=True)


@pytest.mark.parametrize("change, name", [
    (dict(objective="discrete"), "objective"), (dict(model="huge"), "model"), (dict(steps=0), "steps"),
    (dict(lr=0.0), "lr"), (dict(min_lr_ratio=1.5), "min_lr_ratio"), (dict(ema_decay=1.0), "ema_decay"),
    (dict(warmup=-1), "warmup"), (dict(dropout=1.0), "dropout"),
])
def test_config_rejects_bad_values(change, name):
    with pytest.raises(ValueError, match=name):
        TrainConfig(**change)


def test_train_rejects_bad_arguments(data, tmp_path):
    unsized = TokenDataset(data["train"].path)
    with pytest.raises(ValueError, match="dataset.vocab_size"):
        train(tiny_config(), unsized)
    with pytest.raises(ValueError, match="until"):
        train(tiny_config(), data["train"], until=7)
    write_tokens(tmp_path / "other.bin", list(range(20)))
    with pytest.raises(ValueError, match="eval_dataset.vocab_size"):
        train(tiny_config(), data["train"], eval_dataset=TokenDataset(tmp_path / "other.bin", vocab_size=20))
