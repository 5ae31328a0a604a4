"""``mdm-ext sample``: sharded generation gives the same file for any number of processes."""
import os
import subprocess
import sys

import pytest
import torch

from mdm_ext import cli
from mdm_ext.generate import batch_seed, draw_batches
from mdm_ext.language import MarkovLanguage

OPTIONS = ["--markov", "8", "--num-samples", "7", "--batch-size", "3", "--length", "12", "--seed", "4"]


def load(path) -> dict:
    return torch.load(path, weights_only=True)


def test_single_process_writes_tokens_and_counters(tmp_path):
    cli.main(["sample", *OPTIONS, "--out", str(tmp_path / "one.pt")])
    output = load(tmp_path / "one.pt")
    assert output["tokens"].shape == (7, 12) and (output["tokens"] < 8).all()
    assert output["nfe"].tolist() == [12, 12, 12] and output["world_size"] == 1
    assert output["categorical_draws"].tolist() == [36, 36, 12]


def test_two_torchrun_processes_write_the_same_file(tmp_path):
    cli.main(["sample", *OPTIONS, "--out", str(tmp_path / "one.pt")])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                    "-m", "mdm_ext.cli", "sample", *OPTIONS, "--out", str(tmp_path / "two.pt")],
                   check=True, env=env, capture_output=True, timeout=120)
    one, two = load(tmp_path / "one.pt"), load(tmp_path / "two.pt")
    assert two["world_size"] == 2
    assert torch.equal(one["tokens"], two["tokens"]) and torch.equal(one["nfe"], two["nfe"])


def test_batches_get_distinct_seeds_and_ranks_split_them():
    assert len({batch_seed(0, b) for b in range(100)}) == 100
    language = MarkovLanguage.random(6, seed=0)

    def draw(size, seed):
        from mdm_ext import sample
        return sample.first_hitting(language, batch_size=size, length=5, mask_id=6, seed=seed)

    ranks = [draw_batches(draw, 10, 2, seed=1, rank=r, world_size=3) for r in range(3)]
    assert [sorted(part) for part in ranks] == [[0, 3], [1, 4], [2]]
    with pytest.raises(ValueError, match="num_samples"):
        draw_batches(draw, 0, 2, seed=1)


def test_sampler_must_fit_the_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["sample", *OPTIONS, "--sampler", "autoregressive", "--out", str(tmp_path / "x.pt")])
    assert exit.value.code == 2
    assert capsys.readouterr().err == "mdm-ext sample: error: --sampler autoregressive does not fit a masked model\n"


@pytest.mark.parametrize("causal, sampler", [(False, "first_hitting"), (True, "autoregressive")])
def test_samples_a_trained_checkpoint(tmp_path, causal, sampler):
    from mdm_ext.data import TokenDataset, write_tokens
    from mdm_ext.train import TrainConfig, train

    language = MarkovLanguage.random(8, seed=0)
    path = tmp_path / "tokens.bin"
    dataset = TokenDataset(path, write_tokens(path, language.sample(4, 256).flatten()), language.vocab_size)
    config = TrainConfig(length=12, batch_size=4, steps=2, warmup=1, eval_every=2, eval_batches=1,
                         checkpoint_every=2, causal=causal, out=str(tmp_path / "run"), device="cpu")
    result = train(config, dataset)
    cli.main(["sample", "--checkpoint", str(result.checkpoint), "--sampler", sampler, "--num-samples", "3",
              "--length", "12", "--out", str(tmp_path / "samples.pt")])
    tokens = load(tmp_path / "samples.pt")["tokens"]
    assert tokens.shape == (3, 12) and (tokens < 8).all()
