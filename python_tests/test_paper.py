"""The paper's Table 2 protocol (``mdm-ext reproduce --checkpoint --evaluator``) at a toy size on
the CPU: a tiny random DiT in MDLM's Hugging Face layout and a tiny random GPT-2 evaluator, both
saved here."""
import argparse
import json
import math

import pytest

from mdm_ext import cli, paper, reproduce
from offline_models import random_dit, save_evaluator, save_hf, word_tokenizer


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("paper")
    vocab = len(word_tokenizer())  # the DiT generates the tokenizer's ids, plus its mask
    return save_hf(random_dit(vocab_size=vocab + 1), folder / "dit"), save_evaluator(folder / "evaluator")


def parse(argv):
    parser = argparse.ArgumentParser()
    reproduce.add_arguments(parser, reproduce.FULL)
    return reproduce.config_from(parser.parse_args(argv))


def test_checkpoint_options_have_the_protocols_defaults(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a Hugging Face folder, as far as the options see
    m = str(tmp_path)
    config = parse(["--checkpoint", m, "--evaluator", "e"])
    assert isinstance(config, paper.PaperConfig)
    assert (config.steps, config.samples, config.length) == (paper.PAPER_STEPS, 256, None)
    assert (config.eos_rule, config.first_hitting, config.evaluator) == ("mdlm", True, "e")
    given = parse(["--checkpoint", m, "--steps", "8", "--samples", "3", "--length", "16"])
    assert (given.steps, given.samples, given.length) == ((8,), 3, 16)
    # without --checkpoint the shared options keep the synthetic reproduction's values
    assert parse([]) == reproduce.FULL
    assert parse(["--steps", "8"]).steps == (8,)
    with pytest.raises(ValueError, match="samples"):
        parse(["--checkpoint", m, "--samples", "0"])
    for path in (tmp_path / "missing", tmp_path / "folder"):  # argparse refuses them
        (tmp_path / "folder").mkdir(exist_ok=True)
        with pytest.raises(SystemExit):
            parse(["--checkpoint", str(path)])


def test_runs_at_toy_size(files, tmp_path, capsys):
    checkpoint, evaluator = files
    argv = ["reproduce", "--checkpoint", str(checkpoint), "--evaluator", str(evaluator), "--steps", "4", "16",
            "--samples", "6", "--batch-size", "4", "--eval-batch-size", "3", "--device", "cpu", "--no-progress"]
    cli.main([*argv, "--out", str(tmp_path / "a")])
    results = json.loads((tmp_path / "a" / "paper_table.json").read_text())
    assert [(row["sampler"], row["steps"], row["precision"]) for row in results["rows"]] == [
        ("ancestral", 4, "float32"), ("ancestral", 4, "float64"), ("ancestral", 16, "float32"),
        ("ancestral", 16, "float64"), ("first-hitting", None, "float32"), ("first-hitting", None, "float64")]
    assert results["length"] == 16  # the checkpoint's
    for row in results["rows"]:
        assert row["sequences"] == 6 and row["scored_tokens"] > 0
        assert math.isfinite(row["gen_ppl"]) and row["gen_ppl"] == pytest.approx(math.exp(row["gen_nll"]))
        assert 0 < row["entropy"] <= math.log(16) + 1e-9
    first_hitting = results["rows"][-1]
    assert first_hitting["nfe"] == 16  # two batches of NFE = L each
    report = (tmp_path / "a" / "paper_table.md").read_text()
    assert report in capsys.readouterr().out and report.count("| ancestral |") == 4
    # seeded: the same command gives the same table
    cli.main([*argv, "--out", str(tmp_path / "b")])
    again = json.loads((tmp_path / "b" / "paper_table.json").read_text())
    assert [row["gen_nll"] for row in again["rows"]] == [row["gen_nll"] for row in results["rows"]]


def test_refuses_what_is_not_an_mdlm_checkpoint(files, tmp_path):
    _, evaluator = files
    with pytest.raises(ValueError, match="checkpoint"):
        paper.paper_table(paper.PaperConfig(checkpoint=str(tmp_path), evaluator=str(evaluator), device="cpu"))
    checkpoint, _ = files
    with pytest.raises(ValueError, match="length"):
        paper.paper_table(paper.PaperConfig(checkpoint=str(checkpoint), evaluator=str(evaluator), length=32,
                                            device="cpu"))
