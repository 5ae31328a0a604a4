"""The findings of arXiv 2409.02908, reproduced on a synthetic language with exact likelihoods:
``mdm-ext demo`` (a reduced run, minutes on a CPU) and ``mdm-ext reproduce`` (the full one).

The ground truth is a :meth:`MarkovLanguage.sparse` chain of K tokens: each token has a few
likely successors among a few frequent tokens, and a long tail of rare ones. Its exact denoiser
(the oracle) leaves any departure from the truth to the sampler, and trained networks are held to
the same truth.

1. precision: the ancestral sampler over N steps with the float32 Gumbel recipe and with float64
   sampling, and the exact first-hitting sampler; then one ancestral step's categorical drawn
   many times, against the exact distribution of the float32 recipe
   (``reference.legacy_float32_probs``, the paper's Prop. 5.2).
2. first-hitting: exact (one token per call, NFE = L) against parallel (k tokens per call) and
   high-order variants: a quality/cost curve.
3. speed: wall time and NFE of the ancestral runs against exact first-hitting on as many sequences.
4. training: a masked diffusion model and its autoregressive baseline, same data, backbone and
   budget: held-out NLL, and the gen NLL and entropy of their samples.

Everything lands in ``results.md``, ``results.json`` and three PNG plots in the output folder.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from scipy import stats
from torch import Tensor
from tqdm.auto import tqdm

from . import metrics, ops, reference, sample, schedules
from .data import TokenDataset, write_tokens
from .files import write_atomic
from .language import MarkovLanguage
from .loss import autoregressive_loss, masked_diffusion_loss
from .models import PRESETS
from .options import add_options, check_config, from_options, option
from .train import MARKOV_CHAIN_LENGTH, TrainConfig, train

# The float32 recipe's uniforms lie on the grid k / 2^24: a token whose probability in the
# categorical falls to about 2^-24 of the largest one is under-drawn.
FLOAT32_GRID = 2**24
# Exact samples that give the spread of the true gen NLL and the true unigram entropy.
REFERENCE_SAMPLES = 4096
# Draws of the time-agnostic bound per held-out sequence.
ELBO_REPEATS = 8
SCHEDULE = "loglinear"  # the ancestral sampler's default, MDLM's schedule


@dataclass(frozen=True)
class ReproduceConfig:
    """One reproduction; every field is also a command-line option (``--train-steps`` ...)."""

    vocab: int = option(255, "real tokens K of the language; the mask id is K")
    common: int = option(8, "frequent tokens, among which each token's likely successors are")
    successors: int = option(6, "likely successors of each token")
    tail_mass: float = option(0.05, "probability that a token is followed by a uniformly random one")
    length: int = option(32, "sequence length L")
    samples: int = option(64, "sequences per first-hitting, autoregressive and held-out evaluation")
    ancestral_samples: int = option(24, "sequences per ancestral run, whose cost grows with its steps")
    steps: tuple[int, ...] = option((16, 64, 256, 1024, 4096, 16384), "step counts N of ancestral sampling")
    parallel: tuple[int, ...] = option((2, 4, 8), "tokens per call of the parallel first-hitting runs")
    bias_vocab: int = option(50257, "vocabulary of the one-step bias check (GPT-2's)")
    bias_draws: int = option(8000, "draws of the one-step bias check; 0 skips it")
    train_steps: int = option(300, "optimizer steps of each trained model; 0 skips training")
    train_batch: int = option(32, "training sequences per step")
    train_lr: float = option(3e-3, "peak learning rate")
    model: str = option("tiny", "backbone of both trained models", choices=tuple(PRESETS))
    seed: int = option(0, "seed of the language, the samplers, the data and the weights")
    device: str = option("cpu", "cpu, cuda, cuda:N, or auto (cuda when available); the oracle "
                                 "itself computes on the CPU")
    out: str = option("mdm_ext_out", "output folder")
    progress: bool = option(True, "progress bars")

    def __post_init__(self) -> None:
        positive = ("vocab", "common", "successors", "length", "samples", "ancestral_samples", "bias_vocab",
                    "train_batch")
        rules = (
            *((name, getattr(self, name) >= 1, ">= 1") for name in positive),
            ("common", self.common <= self.vocab, f"<= vocab = {self.vocab}"),
            ("successors", self.successors <= self.common, f"<= common = {self.common}"),
            ("successors", self.successors < self.bias_vocab, f"< bias_vocab = {self.bias_vocab}"),
            ("length", self.length >= 2, ">= 2"),
            ("tail_mass", 0 < self.tail_mass <= 1, "in (0, 1]"),
            ("steps", len(self.steps) > 0 and min(self.steps) >= 1, "a non-empty list of ints >= 1"),
            ("parallel", all(k >= 2 for k in self.parallel), "a list of ints >= 2"),
            *((name, getattr(self, name) >= 0, ">= 0") for name in ("bias_draws", "train_steps", "seed")),
            ("train_lr", self.train_lr > 0, "> 0"),
        )
        check_config(self, rules)


# About 100 s on 2 CPU cores, most of it in the ancestral runs at the largest N, which
# passes the onset of the float32 bias, tail_mass * 2^24 / K = 3290 steps (onset_steps), 5 times.
DEMO = ReproduceConfig()
# The paper's scale of steps, for a GPU: L = 256, N up to 65536, 10^5 one-step draws.
FULL = ReproduceConfig(vocab=1023, length=256, samples=256, ancestral_samples=32,
                       steps=(64, 256, 1024, 4096, 16384, 65536), parallel=(2, 4, 8, 16, 32),
                       bias_draws=100_000, train_steps=5000, train_batch=64, train_lr=1e-3,
                       model="small", device="auto", out="mdm_ext_out/reproduce")


@dataclass
class Truth:
    """What exact samples of length L give: ``nll`` = H(X_1..X_L) / L exactly, the standard
    deviation of one sequence's gen NLL and the unigram entropy, estimated on REFERENCE_SAMPLES."""

    entropy_rate: float
    nll: float
    nll_sd: float
    unigram_entropy: float
    unigram_entropy_sd: float


def onset_steps(vocab: int, tail_mass: float) -> float:
    """The step count N at which a tail token (probability tail_mass / K) has probability
    2^-24 in the first step of the ancestral sampler, (alpha_s - alpha_t) / (1 - alpha_t) = 1/N
    of its own: from about there on the float32 recipe under-draws the tail."""
    return tail_mass * FLOAT32_GRID / vocab


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _seed(config: ReproduceConfig, *key: int) -> int:
    """A seed in [0, 2^63) for one run, hashed from the config's seed and the run's key."""
    state = np.random.SeedSequence((config.seed, *key)).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def machine(device: torch.device) -> dict[str, Any]:
    """Where the numbers were taken: timings mean little without it."""
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": str(device),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def truth_of(language: MarkovLanguage, length: int, seed: int) -> Truth:
    """The :class:`Truth` of sequences of ``length`` tokens, from exact samples drawn under ``seed``."""
    exact = language.sample(REFERENCE_SAMPLES, length, generator=torch.Generator().manual_seed(seed))
    entropy = metrics.unigram_entropy(exact)
    return Truth(entropy_rate=language.entropy_rate, nll=language.sequence_entropy(length) / length,
                 nll_sd=float(metrics.gen_nll(exact, language).std()),
                 unigram_entropy=float(entropy.mean()), unigram_entropy_sd=float(entropy.std()))


def sample_row(tokens: Tensor, language: MarkovLanguage, truth: Truth,
               **columns: Any) -> dict[str, Any]:
    """The quality of samples tokens: [B, L], beside ``columns`` (sampler, NFE, time ...).

    z: the gen NLL's distance to the truth in standard errors of B exact samples, so that an
    exact sampler has |z| > 4 with probability 6e-5 (normal approximation).
    """
    tokens = tokens.cpu()
    nll, entropy = metrics.gen_nll(tokens, language), metrics.unigram_entropy(tokens)
    count = tokens.shape[0]
    gen_nll = float(nll.mean())
    return {**columns, "sequences": count, "gen_nll": gen_nll,
            "gen_nll_se": float(nll.std()) / math.sqrt(count) if count > 1 else math.nan,
            "z": (gen_nll - truth.nll) / (truth.nll_sd / math.sqrt(count)),
            "unigram_entropy": float(entropy.mean()),
            "unigram_entropy_se": float(entropy.std()) / math.sqrt(count) if count > 1 else math.nan}


def _sampler_row(result: sample.SampleResult, language: MarkovLanguage, truth: Truth,
                 **columns: Any) -> dict[str, Any]:
    return sample_row(result.tokens, language, truth, **columns, nfe=result.nfe,
                      categorical_draws=result.categorical_draws, seconds=result.seconds)


def precision_sweep(language: MarkovLanguage, truth: Truth, config: ReproduceConfig,
                    device: torch.device, bar: tqdm) -> list[dict[str, Any]]:
    """Experiment 1: ancestral sampling, float32 recipe and float64, at every N of
    ``config.steps``, then exact first-hitting in both precisions."""
    rows = []
    options = dict(length=config.length, mask_id=language.mask_id, progress=config.progress,
                  device=device)
    for index, steps in enumerate(config.steps):
        for legacy in (True, False):
            bar.set_postfix_str(f"ancestral N={steps} {_precision(legacy)}")
            result = sample.ancestral(language, batch_size=config.ancestral_samples, steps=steps,
                                      legacy_float32=legacy, seed=_seed(config, 1, index), **options)
            rows.append(_sampler_row(result, language, truth, sampler="ancestral", steps=steps,
                                     precision=_precision(legacy)))
            bar.update()
    for legacy in (True, False):
        bar.set_postfix_str(f"first-hitting {_precision(legacy)}")
        result = sample.first_hitting(language, batch_size=config.samples, legacy_float32=legacy,
                                      seed=_seed(config, 2), **options)
        rows.append(_sampler_row(result, language, truth, sampler="first-hitting", steps=None,
                                 precision=_precision(legacy)))
        bar.update()
    return rows


def _precision(legacy: bool) -> str:
    return "float32" if legacy else "float64"


def token_bias(config: ReproduceConfig, device: torch.device) -> dict[str, Any]:
    """Experiment 1, one step: the first ancestral step's categorical over a sparse row of
    ``bias_vocab`` tokens, drawn ``bias_draws`` times with the float32 recipe and in float64.

    The row has the language's shape (``successors`` likely tokens, a tail of mass
    ``tail_mass``); each token keeps p (alpha_s - alpha_t) / (1 - alpha_t) and the mask the
    rest. N is the onset of the bias for this vocabulary (:func:`onset_steps`), where a tail token
    sits at the float32 noise floor: the measured frequency of each class (likely, tail, mask)
    is set against the exact distribution of the recipe and against the true probability.
    """
    vocab, successors, tail_mass = config.bias_vocab, config.successors, config.tail_mass
    steps = math.ceil(onset_steps(vocab, tail_mass))
    times = torch.tensor([1.0, 1.0 - 1.0 / steps], dtype=torch.float64)
    alpha_t, alpha_s = schedules.alpha(times, SCHEDULE).tolist()
    token_share = (alpha_s - alpha_t) / (1 - alpha_t)
    probs = torch.full((vocab + 1,), tail_mass / vocab * token_share, dtype=torch.float64)
    probs[:successors] += (1 - tail_mass) / successors * token_share
    probs[vocab] = (1 - alpha_s) / (1 - alpha_t)
    classes = torch.full((vocab + 1,), 1, dtype=torch.long)  # 0: likely, 1: tail, 2: mask
    classes[:successors], classes[vocab] = 0, 2
    legacy_probs = reference.legacy_float32_probs(probs)
    result = {"vocab": vocab, "steps": steps, "draws": config.bias_draws,
              "classes": ["likely", "tail", "mask"], "true": _class_mass(probs, classes),
              "float32_exact": _class_mass(legacy_probs, classes)}
    for legacy in (True, False):
        # the float32 recipe reads float32 probabilities; legacy_float32_probs rounds them alike
        rows = (probs.float() if legacy else probs).to(device).expand(config.bias_draws, -1)
        drawn = ops.categorical(rows, seed=_seed(config, 3), legacy_float32=legacy)
        counts = torch.bincount(classes[drawn.cpu()], minlength=3).tolist()
        result[f"{_precision(legacy)}_counts"] = counts
        result[f"{_precision(legacy)}_tail_p_true"] = stats.binomtest(counts[1], config.bias_draws,
                                                                      result["true"][1]).pvalue
    result["float32_tail_p_exact"] = stats.binomtest(result["float32_counts"][1], config.bias_draws,
                                                     result["float32_exact"][1]).pvalue
    return result


def _class_mass(probs: Tensor, classes: Tensor) -> list[float]:
    return torch.zeros(3, dtype=torch.float64).index_add_(0, classes, probs.double()).tolist()


def first_hitting_curve(language: MarkovLanguage, truth: Truth, config: ReproduceConfig,
                        device: torch.device, bar: tqdm) -> list[dict[str, Any]]:
    """Experiment 2: exact first-hitting and, for each k of ``config.parallel``, k tokens per call
    in first order, second order and predictor-corrector steps (float64)."""
    variants = [(1, 1)] + [(k, order) for k in config.parallel for order in (1, 2, "pc")]
    rows = []
    for index, (k, order) in enumerate(variants):
        bar.set_postfix_str(f"first-hitting k={k} order={order}")
        result = sample.first_hitting(language, batch_size=config.samples, length=config.length,
                                      mask_id=language.mask_id, tokens_per_step=k, order=order,
                                      seed=_seed(config, 4, index), progress=config.progress,
                                      device=device)
        rows.append(_sampler_row(result, language, truth, sampler="first-hitting", tokens_per_step=k,
                                 order=str(order)))
        bar.update()
    return rows


def speed(language: MarkovLanguage, precision_rows: list[dict[str, Any]], config: ReproduceConfig,
          device: torch.device, bar: tqdm) -> list[dict[str, Any]]:
    """Experiment 3: the ancestral runs of experiment 1 against exact first-hitting on as many
    sequences, timed here: wall time, NFE, categorical rows, and time over first-hitting's."""
    bar.set_postfix_str("first-hitting, timed")
    result = sample.first_hitting(language, batch_size=config.ancestral_samples, length=config.length,
                                  mask_id=language.mask_id, seed=_seed(config, 5), progress=config.progress,
                                  device=device)
    bar.update()
    timed = [{key: row[key] for key in ("sampler", "precision", "steps", "nfe", "categorical_draws", "seconds")}
             for row in precision_rows if row["sampler"] == "ancestral"]
    timed.append({"sampler": "first-hitting", "precision": "float64", "steps": None, "nfe": result.nfe,
                  "categorical_draws": result.categorical_draws, "seconds": result.seconds})
    for row in timed:
        row["relative_time"] = row["seconds"] / result.seconds
    return timed


def train_comparison(language: MarkovLanguage, truth: Truth, config: ReproduceConfig, device: torch.device,
                     bar: tqdm) -> list[dict[str, Any]]:
    """Experiment 4: a masked diffusion model and its autoregressive baseline trained on the same
    exact samples with the same backbone, steps, batch and learning rate.

    Held-out NLL, nats per token over held-out exact samples: the autoregressive model's is exact;
    the masked model's is its time-agnostic negative ELBO (an upper bound on its NLL), averaged
    over ELBO_REPEATS maskings of each sequence. Samples: exact first-hitting for the masked
    model, left-to-right for the autoregressive one, both in float64.
    """
    length, mask_id = config.length, language.mask_id
    generator = torch.Generator().manual_seed(_seed(config, 6))
    held_out = language.sample(config.samples, length, generator=generator).to(device)
    chains = math.ceil(config.train_steps * config.train_batch * length / MARKOV_CHAIN_LENGTH)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.bin"
        ids = language.sample(chains, max(MARKOV_CHAIN_LENGTH, length), generator=generator).flatten()
        dataset = TokenDataset(path, write_tokens(path, ids), language.vocab_size)
        for causal in (False, True):
            name = "autoregressive" if causal else "masked diffusion"
            bar.set_postfix_str(f"training the {name} model")
            train_config = TrainConfig(
                model=config.model, causal=causal, length=length, batch_size=config.train_batch,
                steps=config.train_steps, lr=config.train_lr, warmup=config.train_steps // 10,
                ema_decay=0.0, eval_every=config.train_steps, eval_batches=1,
                checkpoint_every=config.train_steps, seed=config.seed, device=str(device))
            start = time.perf_counter()
            network = train(train_config, dataset, progress=config.progress).model.eval()
            train_seconds = time.perf_counter() - start
            bar.update()
            bar.set_postfix_str(f"sampling the {name} model")
            sampling = dict(batch_size=config.samples, length=length, seed=_seed(config, 7),
                            progress=config.progress, device=device)
            if causal:
                held_out_nll = _autoregressive_nll(network, held_out, mask_id)
                result = sample.autoregressive(network, bos_id=mask_id, **sampling)
            else:
                held_out_nll = _diffusion_bound(network, held_out, mask_id, _seed(config, 8))
                result = sample.first_hitting(network, mask_id=mask_id, **sampling)
            rows.append(_sampler_row(result, language, truth, model=name,
                                     sampler="autoregressive" if causal else "first-hitting",
                                     held_out_nll=float(held_out_nll.mean()),
                                     held_out_nll_se=float(held_out_nll.std()) / math.sqrt(len(held_out_nll)),
                                     bound=not causal, train_seconds=train_seconds))
            bar.update()
    return rows


@torch.no_grad()
def _autoregressive_nll(network: Callable[[Tensor], Tensor], x: Tensor, mask_id: int) -> Tensor:
    """Exact NLL of each sequence of x: [B, L] in nats per token: [B]."""
    return torch.stack([autoregressive_loss(network, row[None], mask_id) for row in x]).double().cpu()


@torch.no_grad()
def _diffusion_bound(network: Callable[..., Tensor], x: Tensor, mask_id: int, seed: int) -> Tensor:
    """Time-agnostic negative ELBO of each sequence of x: [B, L] in nats per token: [B]."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    bounds = [masked_diffusion_loss(network, x, mask_id, reduction="none", generator=generator)
              for _ in range(ELBO_REPEATS)]
    return torch.stack(bounds).mean(0).double().cpu()


def reproduce(config: ReproduceConfig) -> dict[str, Any]:
    """Run the experiments of ``config`` and return every number (what results.json holds)."""
    device = _device(config.device)
    language = MarkovLanguage.sparse(config.vocab, successors=config.successors, tail_mass=config.tail_mass,
                                     common=config.common, seed=config.seed)
    truth = truth_of(language, config.length, _seed(config, 0))
    # untimed, so that no timed run pays for the oracle's tables of chain powers
    sample.first_hitting(language, batch_size=1, length=config.length, mask_id=language.mask_id, seed=0,
                         device=device)
    runs = (2 * len(config.steps) + 2 + 1 + 3 * len(config.parallel) + 1
            + (4 if config.train_steps > 0 else 0))
    results: dict[str, Any] = {
        "config": asdict(config), "machine": machine(device),
        "language": {"kind": "MarkovLanguage.sparse", "vocab": config.vocab, "common": config.common,
                     "successors": config.successors, "tail_mass": config.tail_mass, "length": config.length,
                     "onset_steps": onset_steps(config.vocab, config.tail_mass), **asdict(truth)},
        "seconds": {}}
    with tqdm(total=runs, desc="reproduce", unit="run", disable=not config.progress) as bar:
        experiments: list[tuple[str, Callable[[], Any]]] = [
            ("precision", lambda: precision_sweep(language, truth, config, device, bar)),
            ("first_hitting", lambda: first_hitting_curve(language, truth, config, device, bar)),
            ("speed", lambda: speed(language, results["precision"], config, device, bar)),
        ]
        if config.bias_draws > 0:
            experiments.append(("token_bias", lambda: token_bias(config, device)))
        if config.train_steps > 0:
            experiments.append(("training", lambda: train_comparison(language, truth, config, device, bar)))
        for name, experiment in experiments:
            start = time.perf_counter()
            results[name] = experiment()
            results["seconds"][name] = time.perf_counter() - start
    results["seconds"]["total"] = sum(results["seconds"].values())
    return results


# Report.
def _number(value: Optional[float], digits: int = 3) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _quality(row: dict[str, Any]) -> list[str]:
    return [f"{row['gen_nll']:.3f} ± {_number(row['gen_nll_se'])}", f"{row['z']:+.1f}",
            f"{row['unigram_entropy']:.3f} ± {_number(row['unigram_entropy_se'])}"]


def markdown(results: dict[str, Any]) -> str:
    """The report of :func:`reproduce`'s results as Markdown."""
    language, config, info = results["language"], results["config"], results["machine"]
    load = info["load_average"]
    parts = [
        "# Masked diffusion sampling against an exact language (arXiv 2409.02908)",
        f"Machine: {info['platform']}, {info['cpu_count']} CPUs ({info['torch_threads']} torch threads"
        + (f", load average {load[0]:.1f}" if load else "") + f"), torch {info['torch']}, device "
        f"{info.get('gpu', info['device'])}. Total {results['seconds']['total']:.0f} s.",
        f"Language: `MarkovLanguage.sparse({language['vocab']}, successors={language['successors']}, "
        f"tail_mass={language['tail_mass']}, common={language['common']})`, L = {language['length']}: "
        f"each token is followed by one of {language['successors']} of the {language['common']} frequent "
        f"tokens, or with probability {language['tail_mass']} by any token. Truth: entropy rate "
        f"{language['entropy_rate']:.3f} nats, H(X_1..X_L) / L = **{language['nll']:.3f}** nats per token "
        f"(what exact samples average), unigram entropy of exact samples {language['unigram_entropy']:.3f}. "
        "gen NLL: -log p(x) / L under the true language, ± its standard error; z: its distance to "
        "H / L in standard errors of as many exact samples (|z| > 4: 6e-5 for an exact sampler).",
        "## 1. Float32 against float64 sampling",
        f"The float32 Gumbel recipe under-draws tokens whose probability in a step's categorical "
        f"falls to about 2^-24 of the mask's: from about N = tail_mass · 2^24 / K = "
        f"{language['onset_steps']:.0f} steps on here.",
        _table(["sampler", "precision", "N", "NFE", "gen NLL", "z", "unigram entropy", "time (s)"],
               [[row["sampler"], row["precision"], str(row["steps"] or ""), str(row["nfe"]), *_quality(row),
                 f"{row['seconds']:.2f}"] for row in results["precision"]]),
    ]
    if "token_bias" in results:
        bias = results["token_bias"]
        parts += [
            f"One ancestral step (the first of N = {bias['steps']}, this vocabulary's onset) over "
            f"{bias['vocab']} tokens, {bias['draws']} draws: share of each class.",
            _table(["class", "true", "float32 exact (Prop. 5.2)", "float32 drawn", "float64 drawn"],
                   [[name, f"{bias['true'][i]:.3g}", f"{bias['float32_exact'][i]:.3g}",
                     f"{bias['float32_counts'][i] / bias['draws']:.3g}",
                     f"{bias['float64_counts'][i] / bias['draws']:.3g}"]
                    for i, name in enumerate(bias["classes"])]),
            f"Tail, binomial p-values: float32 draws against the exact float32 distribution "
            f"{bias['float32_tail_p_exact']:.2g}, against the truth {bias['float32_tail_p_true']:.2g}; "
            f"float64 draws against the truth {bias['float64_tail_p_true']:.2g}.",
        ]
    parts += [
        "## 2. First-hitting: exact, parallel and high-order (float64)",
        _table(["tokens per call", "order", "NFE", "gen NLL", "z", "unigram entropy", "time (s)"],
               [[str(row["tokens_per_step"]), row["order"], str(row["nfe"]), *_quality(row),
                 f"{row['seconds']:.2f}"] for row in results["first_hitting"]]),
        f"## 3. Speed ({config['ancestral_samples']} sequences each)",
        _table(["sampler", "precision", "N", "NFE", "categorical rows", "time (s)", "time / first-hitting's"],
               [[row["sampler"], row["precision"], str(row["steps"] or ""), str(row["nfe"]),
                 str(row["categorical_draws"]), f"{row['seconds']:.2f}", f"{row['relative_time']:.1f}"]
                for row in results["speed"]]),
    ]
    if "training" in results:
        parts += [
            f"## 4. Masked diffusion against autoregressive, {config['train_steps']} steps of "
            f"{config['train_batch']} sequences each, `{config['model']}` backbone",
            _table(["model", "held-out NLL", "sampler", "NFE", "gen NLL", "z", "unigram entropy", "train (s)"],
                   [[row["model"], f"{'≤ ' if row['bound'] else ''}{row['held_out_nll']:.3f} ± "
                     f"{row['held_out_nll_se']:.3f}", row["sampler"], str(row["nfe"]), *_quality(row),
                     f"{row['train_seconds']:.1f}"] for row in results["training"]]),
            "The masked model's held-out NLL is its time-agnostic ELBO bound; truth: "
            f"{language['nll']:.3f}.",
        ]
    return "\n\n".join(parts) + "\n"


def plot(results: dict[str, Any]) -> dict[str, bytes]:
    """PNG plots by file name: precision.png (gen NLL and unigram entropy against N), speed.png
    (wall time and NFE against N) and first_hitting.png (gen NLL against NFE)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    from matplotlib import pyplot as plt

    return {"precision.png": _png(_plot_precision(plt, results)), "speed.png": _png(_plot_speed(plt, results)),
            "first_hitting.png": _png(_plot_first_hitting(plt, results))}


def _ancestral(results: dict[str, Any], table: str) -> dict[str, list[dict[str, Any]]]:
    """The ancestral rows of ``table`` by precision, in order of N."""
    return {precision: [row for row in results[table] if row["sampler"] == "ancestral"
                        and row["precision"] == precision] for precision in ("float32", "float64")}


def _exact(results: dict[str, Any]) -> dict[str, Any]:
    return next(row for row in results["precision"] if row["sampler"] == "first-hitting"
                and row["precision"] == "float64")


def _plot_precision(plt: Any, results: dict[str, Any]) -> Any:
    language, exact = results["language"], _exact(results)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (("gen_nll", language["nll"], "gen NLL (nats per token)"),
              ("unigram_entropy", language["unigram_entropy"], "unigram entropy of a sequence (nats)"))
    for ax, (key, true_value, title) in zip(axes, panels):
        for precision, rows in _ancestral(results, "precision").items():
            ax.errorbar([row["steps"] for row in rows], [row[key] for row in rows],
                        yerr=[row[f"{key}_se"] for row in rows], marker="o", capsize=3,
                        label=f"ancestral, {precision}")
        ax.axhline(true_value, color="black", label="exact samples")
        ax.axhline(exact[key], color="tab:green", linestyle="--", label=f"first-hitting (NFE = {exact['nfe']})")
        if key == "gen_nll":
            ax.axhline(language["entropy_rate"], color="gray", linestyle=":", label="entropy rate")
        ax.axvline(language["onset_steps"], color="tab:red", alpha=0.3, label="float32 onset")
        ax.set(xscale="log", xlabel="steps N", title=title)
        ax.legend(fontsize=8)
    return fig


def _plot_speed(plt: Any, results: dict[str, Any]) -> Any:
    first_hitting = results["speed"][-1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for precision, rows in _ancestral(results, "speed").items():
        steps = [row["steps"] for row in rows]
        axes[0].plot(steps, [row["seconds"] for row in rows], marker="o", label=f"ancestral, {precision}")
        axes[1].plot(steps, [row["nfe"] for row in rows], marker="o", label=f"ancestral, {precision}")
    axes[0].axhline(first_hitting["seconds"], color="tab:green", linestyle="--", label="first-hitting")
    axes[1].axhline(first_hitting["nfe"], color="tab:green", linestyle="--", label="first-hitting")
    axes[0].set(xscale="log", yscale="log", xlabel="steps N", ylabel="seconds",
                title=f"wall time, {results['config']['ancestral_samples']} sequences")
    axes[1].set(xscale="log", yscale="log", xlabel="steps N", title="network calls (NFE)")
    for ax in axes:
        ax.legend(fontsize=8)
    return fig


def _plot_first_hitting(plt: Any, results: dict[str, Any]) -> Any:
    exact = _exact(results)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for order in ("1", "2", "pc"):
        rows = [row for row in results["first_hitting"] if row["order"] == order and row["tokens_per_step"] > 1]
        ax.errorbar([row["nfe"] for row in rows], [row["gen_nll"] for row in rows],
                    yerr=[row["gen_nll_se"] for row in rows], marker="o", capsize=3,
                    label=f"parallel, order {order}")
    ax.errorbar([exact["nfe"]], [exact["gen_nll"]], yerr=[exact["gen_nll_se"]], marker="*", markersize=12,
                color="tab:red", label="exact (one token per call)")
    ax.axhline(results["language"]["nll"], color="black", label="exact samples")
    ax.set(xscale="log", xlabel="network calls (NFE)", ylabel="gen NLL (nats per token)",
           title="first-hitting: quality against cost")
    ax.legend(fontsize=8)
    return fig


def _png(figure: Any) -> bytes:
    from matplotlib import pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()


def write(results: dict[str, Any], out: str | os.PathLike) -> list[Path]:
    """results.md, results.json and the plots in ``out``; returns their paths."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"results.md": markdown(results).encode(),
             "results.json": json.dumps(results, indent=2).encode(), **plot(results)}
    for name, data in files.items():
        write_atomic(folder / name, lambda file: file.write(data))
    return [folder / name for name in files]


# Command line.
def add_arguments(parser: argparse.ArgumentParser, preset: ReproduceConfig) -> None:
    """Every ReproduceConfig field as an option, defaulting to ``preset``'s value."""
    add_options(parser, ReproduceConfig, preset)


def run(args: argparse.Namespace) -> None:
    """``mdm-ext demo`` / ``mdm-ext reproduce``: run, print the report, write the files (the
    report is printed first, so that a failed write loses no result)."""
    config = from_options(ReproduceConfig, args)
    results = reproduce(config)
    print(markdown(results), flush=True)
    paths = write(results, config.out)
    print(f"wrote {', '.join(str(path) for path in paths)}")
