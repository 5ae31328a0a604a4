"""The paper's own experiment (arXiv 2409.02908, Table 2): a released masked diffusion model,
sampled by the ancestral sampler with float32 and with float64 categorical draws at each N and
by the first-hitting sampler, its samples scored by an evaluator language model (generative
perplexity, GPT-2 Large in the paper) beside their unigram entropy.

``mdm-ext reproduce --checkpoint PATH --evaluator PATH`` runs it (a GPU's job at the released
model's size, L = 1024); :func:`paper_table` is the same as a function. The protocol:

1. the checkpoint is an MDLM DiT (:func:`mdm_ext.dit.load_mdlm`: its Hugging Face folder or its
   Lightning .ckpt, the moving average of the weights);
2. ``samples`` sequences of ``length`` tokens per row, in batches of ``batch_size`` (batch b of a
   row seeded with (seed, row, b)); ancestral rows under MDLM's log-linear schedule;
3. each sequence is decoded by the generator's tokenizer (MDLM's is GPT-2's, the evaluator's),
   retokenised by the evaluator's and scored by :func:`mdm_ext.metrics.gen_perplexity`
   (``eos_rule="mdlm"``: MDLM's evaluation mask, which the paper's numbers come from), truncated
   to ``length`` evaluator tokens as MDLM's evaluation does;
4. the unigram entropy of each generated sequence (its own token ids) and of its evaluator tokens.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from . import metrics, sample
from .dit import is_mdlm_checkpoint, load_mdlm
from .files import write_atomic
from .generate import batch_seed, checkpoint_path
from .options import add_options, check_config, option
from .processes import process_device

# MDLM's published sampling step counts (its README's Hugging Face and local-checkpoint runs).
PAPER_STEPS = (1000, 10000)
SCHEDULE = "loglinear"  # MDLM's noise schedule
# Options shared with the synthetic reproduction; --checkpoint gives them these defaults instead.
SHARED = {"steps": PAPER_STEPS, "samples": 256, "length": None}


@dataclass(frozen=True)
class PaperConfig:
    """One run of the protocol; the checkpoint-specific fields are options of ``mdm-ext reproduce``
    (``--checkpoint`` ...), the others are shared with the synthetic reproduction."""

    checkpoint: Optional[str] = option(None, "an MDLM checkpoint (Hugging Face folder such as "
                                             "kuleshov-group/mdlm-owt's, or Lightning .ckpt): run the "
                                             "paper's Table 2 protocol on it instead of the synthetic language")
    evaluator: str = option("gpt2-large", "the evaluator: a Hugging Face causal LM, hub name or local folder")
    tokenizer: Optional[str] = option(None, "the generator's tokenizer, hub name or local folder "
                                            "(default: the evaluator's; MDLM's is GPT-2's)")
    batch_size: int = option(16, "sequences sampled per batch")
    eval_batch_size: int = option(8, "sequences per evaluator call (MDLM's perplexity batch)")
    eos_rule: str = option("mdlm", "which tokens after an EOS are scored", choices=metrics.EOS_RULES)
    first_hitting: bool = option(True, "also the first-hitting sampler (NFE = L), in both precisions")
    steps: tuple[int, ...] = PAPER_STEPS
    samples: int = 256
    length: Optional[int] = None  # the checkpoint's length
    seed: int = 0
    device: str = "auto"
    out: str = "mdm_ext_out/reproduce"
    progress: bool = True

    def __post_init__(self) -> None:
        rules = (
            ("checkpoint", self.checkpoint is not None, "a path"),
            *((name, getattr(self, name) >= 1, ">= 1") for name in ("batch_size", "eval_batch_size", "samples")),
            ("steps", len(self.steps) > 0 and min(self.steps) >= 1, "a non-empty list of ints >= 1"),
            ("length", self.length is None or self.length >= 2, "None or an int >= 2"),
        )
        check_config(self, rules)


CHECKPOINT_FIELDS = ("checkpoint", "evaluator", "tokenizer", "batch_size", "eval_batch_size", "eos_rule",
                     "first_hitting")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The checkpoint-specific options, in their own group."""
    group = parser.add_argument_group(
        "the paper's Table 2 on a released checkpoint (with --checkpoint; --steps then defaults to "
        f"{' '.join(map(str, PAPER_STEPS))}, --samples to {SHARED['samples']}, --length to the checkpoint's)")
    for name, kind in (("checkpoint", checkpoint_path), ("tokenizer", str)):  # options without a default value
        group.add_argument(f"--{name}", type=kind, help=PaperConfig.__dataclass_fields__[name].metadata["help"])
    add_options(group, PaperConfig, skip=("checkpoint", "tokenizer", *SHARED, "seed", "device", "out", "progress"))


def paper_table(config: PaperConfig) -> dict[str, Any]:
    """Run the protocol of the module docstring; returns every number (what paper_table.json holds)."""
    from transformers import AutoTokenizer

    from .reproduce import machine

    device = process_device(config.device)
    if not is_mdlm_checkpoint(config.checkpoint):
        raise ValueError(f"checkpoint must be an MDLM checkpoint (a folder with its config.json, or a .ckpt), "
                         f"got {config.checkpoint!r}")
    network = load_mdlm(config.checkpoint, map_location=device)
    length = network.config.length if config.length is None else config.length
    if length > network.config.length:
        raise ValueError(f"length must be <= the checkpoint's length {network.config.length}, got {length}")
    evaluator, evaluator_tokenizer = metrics.load_evaluator(config.evaluator, device=device)
    tokenizer = (evaluator_tokenizer if config.tokenizer is None
                 else AutoTokenizer.from_pretrained(config.tokenizer))
    runs = [("ancestral", steps, legacy) for steps in config.steps for legacy in (True, False)]
    if config.first_hitting:
        runs += [("first-hitting", None, legacy) for legacy in (True, False)]
    rows = []
    for index, (sampler, steps, legacy) in enumerate(runs):
        tokens, nfe, draws, seconds = _draw(network, sampler, steps, legacy, length, config, index)
        texts = tokenizer.batch_decode(tokens.tolist())
        score = metrics.gen_perplexity(texts, evaluator, evaluator_tokenizer, batch_size=config.eval_batch_size,
                                       max_length=length, eos_rule=config.eos_rule)
        entropy = metrics.unigram_entropy(tokens)
        rows.append({"sampler": sampler, "steps": steps, "precision": "float32" if legacy else "float64",
                     "sequences": len(texts), "nfe": nfe, "categorical_draws": draws, "seconds": seconds,
                     "gen_ppl": score.perplexity, "gen_nll": score.nll,
                     "gen_nll_se": _se(score.sample_nll), "scored_tokens": int(score.scored_tokens.sum()),
                     "entropy": float(entropy.mean()), "entropy_se": _se(entropy),
                     "evaluator_entropy": score.entropy})
        if config.progress:
            print(f"{sampler} {steps or ''} {rows[-1]['precision']}: gen PPL {score.perplexity:.2f}, "
                  f"entropy {rows[-1]['entropy']:.3f}, {seconds:.1f} s", flush=True)
    return {"config": asdict(config), "machine": machine(device), "model": asdict(network.config),
            "length": length, "rows": rows}


def _draw(network: Any, sampler: str, steps: Optional[int], legacy: bool, length: int, config: PaperConfig,
          row: int) -> tuple[torch.Tensor, float, int, float]:
    """Tokens [samples, length] of one row, with its network calls per batch (mean over its
    batches), and its categorical rows and seconds summed over them."""
    parts, nfe, draws, seconds = [], 0, 0, 0.0
    for batch, start in enumerate(range(0, config.samples, config.batch_size)):
        common = dict(batch_size=min(config.batch_size, config.samples - start), length=length,
                      mask_id=network.mask_id, seed=batch_seed(config.seed, row * 2**20 + batch),
                      legacy_float32=legacy, progress=False, device=network.vocab_embed.embedding.device)
        result = (sample.ancestral(network, steps=steps, schedule=SCHEDULE, **common) if sampler == "ancestral"
                  else sample.first_hitting(network, schedule=SCHEDULE, **common))
        parts.append(result.tokens.cpu())
        nfe, draws, seconds = nfe + result.nfe, draws + result.categorical_draws, seconds + result.seconds
    return torch.cat(parts), nfe / len(parts), draws, seconds


def _se(values: torch.Tensor) -> float:
    values = values[~values.isnan()]
    return float(values.std()) / math.sqrt(len(values)) if len(values) > 1 else math.nan


def markdown(results: dict[str, Any]) -> str:
    """The table of :func:`paper_table`'s results as Markdown."""
    config, info = results["config"], results["machine"]
    header = ["sampler", "precision", "N", "NFE", "gen PPL", "gen NLL", "entropy", "time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results["rows"]:
        lines.append(f"| {row['sampler']} | {row['precision']} | {row['steps'] or ''} | {row['nfe']:.0f} | "
                     f"{row['gen_ppl']:.2f} | {row['gen_nll']:.3f} ± {row['gen_nll_se']:.3f} | "
                     f"{row['entropy']:.3f} ± {row['entropy_se']:.3f} | {row['seconds']:.1f} |")
    return "\n\n".join([
        "# arXiv 2409.02908, Table 2 protocol",
        f"Checkpoint `{config['checkpoint']}`, evaluator `{config['evaluator']}`, {config['samples']} sequences "
        f"of {results['length']} tokens per row, machine {info.get('gpu', info['device'])} ({info['platform']}), "
        f"torch {info['torch']}. gen PPL: exp of the evaluator's mean NLL over all scored tokens "
        f"(EOS rule `{config['eos_rule']}`); gen NLL ± its standard error over sequences; entropy: the unigram "
        "entropy of each generated sequence's tokens, mean ± standard error. NFE: network calls per batch "
        f"of {config['batch_size']}; time: the row's sampling, all batches.",
        "\n".join(lines),
    ]) + "\n"


def write(results: dict[str, Any], out: str | os.PathLike) -> list[Path]:
    """paper_table.md and paper_table.json in ``out``."""
    folder = Path(out)
    files = {"paper_table.md": markdown(results).encode(), "paper_table.json": json.dumps(results, indent=2).encode()}
    for name, data in files.items():
        write_atomic(folder / name, lambda file, data=data: file.write(data))
    return [folder / name for name in files]


def config_from(args: argparse.Namespace, given: dict[str, Any]) -> PaperConfig:
    """The configuration of ``mdm-ext reproduce --checkpoint ...``: ``given`` holds the shared
    options set on the command line, the others take this protocol's defaults."""
    values = {name: getattr(args, name) for name in CHECKPOINT_FIELDS + ("seed", "device", "out", "progress")}
    values.update({name: tuple(value) if isinstance(value, list) else value
                   for name, value in {**SHARED, **given}.items()})
    return PaperConfig(**values)


def run(config: PaperConfig) -> None:
    """Run, print the table, write the files."""
    results = paper_table(config)
    print(markdown(results), flush=True)  # first, so that a failed write loses no result
    paths = write(results, config.out)
    print(f"wrote {', '.join(str(path) for path in paths)}")
