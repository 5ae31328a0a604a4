"""The findings of arXiv 2409.02908, reproduced on a synthetic language with exact likelihoods:
``mdm-ext demo`` (a reduced run, minutes on a CPU) and ``mdm-ext reproduce`` (the full one).

The ground truth is a :meth:`MarkovLanguage.sparse` chain of K tokens: each token has a few
likely successors among a few frequent tokens, and a long tail of rare ones. Its exact denoiser
(the oracle) leaves any departure from the truth to the sampler, and trained networks are held to
the same truth.

1. precision: the ancestral sampler over N steps with the float32 Gumbel recipe and with float64
   sampling, and the exact first-hitting sampler; then one ancestral step's categorical drawn
   many times, against the exact distribution of the float32 recipe
   (``reference.legacy_float32_probs``) and the paper's truncated-Gumbel model of it (Prop. 5.2,
   ``precision.truncated_gumbel_probs``); the effective temperature of both at every N.
2. first-hitting: exact (one token per call, NFE = L) against parallel (k tokens per call),
   second-order and predictor-corrector variants at equal NFE: a quality/cost curve.
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
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from scipy import stats
from torch import Tensor
from tqdm.auto import tqdm

from . import metrics, ops, paper, reference, sample, schedules
from .data import TokenDataset, write_tokens
from .files import write_atomic
from .language import MarkovLanguage
from .loss import autoregressive_loss, masked_diffusion_loss
from .models import PRESETS
from .options import add_options, check_config, from_options, option
from .precision import FLOAT32_GUMBEL_CAP, effective_temperature, truncated_gumbel_probs
from .train import MARKOV_CHAIN_LENGTH, TrainConfig, train

# The float32 recipe's uniforms lie on the grid k / 2^24: a token whose probability in the
# categorical falls to about 2^-24 of the largest one is under-drawn.
FLOAT32_GRID = 2**24
# Exact samples that give the spread of the true gen NLL and the true unigram entropy.
REFERENCE_SAMPLES = 4096
# Draws of the time-agnostic bound per held-out sequence.
ELBO_REPEATS = 8
SCHEDULE = "loglinear"  # the ancestral sampler's default, MDLM's schedule
# The level of the one-step check's binomial tests: float32 is "separated from the truth" below it.
SIGNIFICANCE = 1e-4


@dataclass(frozen=True)
class ReproduceConfig:
    """One reproduction; every field is also a command-line option (``--train-steps`` ...)."""

    vocab: int = option(255, "real tokens K of the language; the mask id is K")
    common: int = option(8, "frequent tokens, among which each token's likely successors are")
    successors: int = option(6, "likely successors of each token")
    tail_mass: float = option(0.05, "probability that a token is followed by a uniformly random one")
    length: int = option(32, "sequence length L")
    samples: int = option(64, "sequences per first-hitting, autoregressive and held-out evaluation")
    first_hitting_samples: int = option(2048, "sequences per variant of the equal-NFE first-hitting comparison")
    ancestral_samples: int = option(24, "sequences per ancestral run, whose cost grows with its steps")
    steps: tuple[int, ...] = option((16, 64, 256, 1024, 4096, 16384), "step counts N of ancestral sampling")
    parallel: tuple[int, ...] = option((2, 4, 8), "tokens per call of the parallel first-hitting runs")
    bias_vocab: int = option(50257, "vocabulary of the one-step bias check (GPT-2's)")
    bias_draws: int = option(40000, "draws of the one-step bias check; 0 skips it")
    bias_onsets: float = option(3.0, "N of the one-step bias check, in multiples of its vocabulary's onset")
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
        positive = ("vocab", "common", "successors", "length", "samples", "ancestral_samples",
                    "first_hitting_samples", "bias_vocab", "train_batch")
        rules = (
            *((name, getattr(self, name) >= 1, ">= 1") for name in positive),
            ("common", self.common <= self.vocab, f"<= vocab = {self.vocab}"),
            ("successors", self.successors <= self.common, f"<= common = {self.common}"),
            ("successors", self.successors < self.bias_vocab, f"< bias_vocab = {self.bias_vocab}"),
            ("length", self.length >= 2, ">= 2"),
            ("tail_mass", 0 < self.tail_mass <= 1, "in (0, 1]"),
            ("steps", len(self.steps) > 0 and min(self.steps) >= 1, "a non-empty list of ints >= 1"),
            ("parallel", all(2 <= k and 2 * k <= self.length for k in self.parallel),
             f"a list of ints k >= 2 with 2 k <= length = {self.length}"),
            ("bias_onsets", self.bias_onsets > 0, "> 0"),
            *((name, getattr(self, name) >= 0, ">= 0") for name in ("bias_draws", "train_steps", "seed")),
            ("train_lr", self.train_lr > 0, "> 0"),
        )
        check_config(self, rules)


# About 90 s on 2 CPU cores, most of it in the ancestral runs at the largest N, which passes the
# onset of the float32 bias, tail_mass * 2^24 / K = 3290 steps (onset_steps), 5 times; then the
# training runs and the one-step check's 40000 draws of 50258 tokens in each precision.
DEMO = ReproduceConfig()
# The paper's scale of steps, for a GPU: L = 256, N up to 65536, 4 10^5 one-step draws.
FULL = ReproduceConfig(vocab=1023, length=256, samples=256, ancestral_samples=32, first_hitting_samples=8192,
                       steps=(64, 256, 1024, 4096, 16384, 65536), parallel=(2, 4, 8, 16, 32),
                       bias_draws=400_000, train_steps=5000, train_batch=64, train_lr=1e-3,
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


def step_row(vocab: int, successors: int, tail_mass: float, steps: int) -> tuple[Tensor, Tensor]:
    """The first ancestral step's categorical at N = ``steps`` over a row of the language's shape.

    Returns probs: [vocab + 1] float64 and classes: [vocab + 1] (0: likely, 1: tail, 2: mask):
    ``successors`` likely tokens of probability (1 - tail_mass) / successors + tail_mass / vocab,
    the others tail_mass / vocab, each scaled by (alpha_s - alpha_t) / (1 - alpha_t); the mask
    (id ``vocab``) keeps the rest.
    """
    times = torch.tensor([1.0, 1.0 - 1.0 / steps], dtype=torch.float64)
    alpha_t, alpha_s = schedules.alpha(times, SCHEDULE).tolist()
    token_share = (alpha_s - alpha_t) / (1 - alpha_t)
    probs = torch.full((vocab + 1,), tail_mass / vocab * token_share, dtype=torch.float64)
    probs[:successors] += (1 - tail_mass) / successors * token_share
    probs[vocab] = (1 - alpha_s) / (1 - alpha_t)
    classes = torch.full((vocab + 1,), 1, dtype=torch.long)
    classes[:successors], classes[vocab] = 0, 2
    return probs, classes


def _laws(probs: Tensor) -> dict[str, Tensor]:
    """The float32 recipe's law on probs: exact (24-bit uniforms) and the paper's model."""
    # the recipe reads float32 probabilities; the exact law rounds them alike, the model does too
    return {"exact": reference.legacy_float32_probs(probs),
            "model": truncated_gumbel_probs(probs.float().double())}


def _temperatures(probs: Tensor, classes: Tensor, law: Tensor) -> dict[str, float]:
    return {"tail": effective_temperature(probs, law, by="tail", tail=classes == 1),
            "entropy": effective_temperature(probs, law, by="entropy")}


def token_bias(config: ReproduceConfig, device: torch.device) -> dict[str, Any]:
    """Experiment 1, one step: the first ancestral step's categorical over a row of
    ``bias_vocab`` tokens (:func:`step_row`), drawn ``bias_draws`` times with the float32 recipe
    and in float64.

    N is ``bias_onsets`` times the onset of the bias for this vocabulary (:func:`onset_steps`),
    past the point where a tail token sits at the float32 noise floor. The share of each class
    (likely, tail, mask) is given as true, under the exact law of the recipe's 24-bit uniforms,
    under the paper's continuous truncated-Gumbel model (Prop. 5.2), and as drawn; binomial
    tests of the drawn tail shares, and the effective temperature of both laws.
    """
    vocab = config.bias_vocab
    steps = math.ceil(config.bias_onsets * onset_steps(vocab, config.tail_mass))
    probs, classes = step_row(vocab, config.successors, config.tail_mass, steps)
    laws = _laws(probs)
    draws = config.bias_draws
    result = {"vocab": vocab, "steps": steps, "onsets": config.bias_onsets, "draws": draws,
              "significance": SIGNIFICANCE,
              "classes": ["likely", "tail", "mask"], "true": _class_mass(probs, classes),
              **{f"float32_{name}": _class_mass(law, classes) for name, law in laws.items()},
              "temperature": {name: _temperatures(probs, classes, law) for name, law in laws.items()}}
    for legacy in (True, False):
        rows = (probs.float() if legacy else probs).to(device).expand(draws, -1)
        drawn = ops.categorical(rows, seed=_seed(config, 3), legacy_float32=legacy)
        result[f"{_precision(legacy)}_counts"] = torch.bincount(classes[drawn.cpu()], minlength=3).tolist()
    tail_p = {}
    for drawn in ("float32", "float64"):
        for against in ("true", "float32_exact", "float32_model"):
            tail_p[f"{drawn}_vs_{against.removeprefix('float32_')}"] = stats.binomtest(
                result[f"{drawn}_counts"][1], draws, result[against][1]).pvalue
    result["tail_p"] = tail_p
    return result


def float32_temperature(config: ReproduceConfig) -> list[dict[str, Any]]:
    """Experiment 1, as a temperature: for each N of ``config.steps``, the first ancestral step
    of a row of the language (:func:`step_row`), its tail share under the float32 recipe's exact
    law and the truncated-Gumbel model, and the temperature T at which exact sampling matches
    each law by tail mass and by entropy (T < 1: the recipe samples colder than the truth)."""
    rows = []
    for steps in config.steps:
        probs, classes = step_row(config.vocab, config.successors, config.tail_mass, steps)
        laws = _laws(probs)
        tail = classes == 1
        rows.append({"steps": steps, "tail_true": float(probs[tail].sum()),
                     **{f"tail_{name}": float(law[tail].sum()) for name, law in laws.items()},
                     "temperature": {name: _temperatures(probs, classes, law) for name, law in laws.items()}})
    return rows


def _class_mass(probs: Tensor, classes: Tensor) -> list[float]:
    return torch.zeros(3, dtype=torch.float64).index_add_(0, classes, probs.double()).tolist()


def _variants(config: ReproduceConfig) -> list[tuple[int, Union[int, str]]]:
    """(tokens per call, order) of experiment 2: exact, then at each NFE L / k of
    ``config.parallel`` order 1 and order 2 with k tokens per call and predictor-corrector with
    2k (its steps cost two calls), so that the variants of a level cost the same NFE."""
    levels = [(k, 1) for k in config.parallel] + [(k, 2) for k in config.parallel]
    levels += [(2 * k, "pc") for k in config.parallel]
    return [(1, 1)] + sorted(levels, key=lambda variant: (variant[0] // (2 if variant[1] == "pc" else 1),
                                                         str(variant[1])))


def first_hitting_curve(language: MarkovLanguage, truth: Truth, config: ReproduceConfig,
                        device: torch.device, bar: tqdm) -> list[dict[str, Any]]:
    """Experiment 2: exact first-hitting against parallel, second-order and predictor-corrector
    variants at equal NFE (:func:`_variants`), ``first_hitting_samples`` sequences each
    (float64). Each row carries its excess gen NLL over the truth and, for the variants beside
    order 1 at the same NFE, their difference to it with its standard error."""
    rows = []
    for index, (k, order) in enumerate(_variants(config)):
        bar.set_postfix_str(f"first-hitting k={k} order={order}")
        result = sample.first_hitting(language, batch_size=config.first_hitting_samples, length=config.length,
                                      mask_id=language.mask_id, tokens_per_step=k, order=order,
                                      seed=_seed(config, 4, index), progress=config.progress,
                                      device=device)
        row = _sampler_row(result, language, truth, sampler="first-hitting", tokens_per_step=k, order=str(order))
        row["excess"] = row["gen_nll"] - truth.nll
        rows.append(row)
        bar.update()
    for row in rows:
        first_order = next(other for other in rows if other["nfe"] == row["nfe"] and other["order"] == "1")
        if row is not first_order:
            row["vs_order_1"] = row["gen_nll"] - first_order["gen_nll"]
            row["vs_order_1_se"] = math.hypot(row["gen_nll_se"], first_order["gen_nll_se"])
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
    runs = (2 * len(config.steps) + 2 + len(_variants(config)) + 1
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
        experiments.append(("temperature", lambda: float32_temperature(config)))
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


def _difference(row: dict[str, Any]) -> str:
    """A variant's difference to order 1 at its NFE, marked unresolved within 3 standard errors."""
    if "vs_order_1" not in row:
        return ""
    difference, se = row["vs_order_1"], row["vs_order_1_se"]
    return f"{difference:+.3f} ± {se:.3f}" + ("" if abs(difference) > 3 * se else " (unresolved)")


def _temperature_report(results: dict[str, Any]) -> list[str]:
    language = results["language"]
    return [
        f"Effective temperature of the float32 recipe at the first step of each N (a row of the language: "
        f"{language['successors']} likely successors, a tail of {language['vocab'] - language['successors']} "
        f"tokens of mass {language['tail_mass']}): the tail's share of the step's categorical, true, under the "
        "recipe's exact law (its uniforms on the 24-bit grid) and under the truncated-Gumbel model (a continuous "
        f"Gumbel capped at {FLOAT32_GUMBEL_CAP:.2f}, the paper's Prop. 5.2), and the temperature T at which "
        "exact sampling of softmax(log p / T) matches each law in tail mass and in entropy.",
        _table(["N", "tail share true", "exact law", "model", "T by tail (exact)", "T by entropy (exact)",
                "T by tail (model)", "T by entropy (model)"],
               [[str(row["steps"]), f"{row['tail_true']:.3g}", f"{row['tail_exact']:.3g}", f"{row['tail_model']:.3g}",
                 *(_number(row["temperature"][law][by], 4) for law in ("exact", "model") for by in ("tail", "entropy"))]
                for row in results["temperature"]]),
    ]


def _bias_report(bias: dict[str, Any]) -> list[str]:
    p, level = bias["tail_p"], bias["significance"]
    separated = "separated" if p["float32_vs_true"] < level else "not separated"
    return [
        f"One ancestral step, the first of N = {bias['steps']} ({bias['onsets']:g} times this vocabulary's onset), over "
        f"{bias['vocab']} tokens: share of each class in {bias['draws']} draws of each precision.",
        _table(["class", "true", "float32 exact law (24-bit uniforms)", "truncated-Gumbel model (Prop. 5.2)",
                "float32 drawn", "float64 drawn"],
               [[name, f"{bias['true'][i]:.4g}", f"{bias['float32_exact'][i]:.4g}", f"{bias['float32_model'][i]:.4g}",
                 f"{bias['float32_counts'][i] / bias['draws']:.4g}", f"{bias['float64_counts'][i] / bias['draws']:.4g}"]
                for i, name in enumerate(bias["classes"])]),
        f"Tail, binomial p-values: float32 draws against the truth {p['float32_vs_true']:.2g} ({separated} at "
        f"{level:g}), against the exact law {p['float32_vs_exact']:.2g}, against the model "
        f"{p['float32_vs_model']:.2g}; float64 draws against the truth {p['float64_vs_true']:.2g}. "
        f"Effective temperature on this row: exact law {bias['temperature']['exact']['tail']:.3f} by tail mass, "
        f"{bias['temperature']['exact']['entropy']:.3f} by entropy; model {bias['temperature']['model']['tail']:.3f} "
        f"and {bias['temperature']['model']['entropy']:.3f}.",
    ]


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
    parts += _temperature_report(results)
    if "token_bias" in results:
        parts += _bias_report(results["token_bias"])
    parts += [
        "## 2. First-hitting at equal cost (float64)",
        f"{config['first_hitting_samples']} sequences per variant; rows of one NFE cost the same number of "
        "network calls (a predictor-corrector step costs two, so it unmasks 2k tokens per step where "
        "orders 1 and 2 unmask k). Excess: gen NLL minus the truth; vs order 1: the difference to order 1 "
        "at the same NFE ± its standard error.",
        _table(["NFE", "order", "tokens per step", "gen NLL", "excess", "vs order 1", "unigram entropy",
                "time (s)"],
               [[str(row["nfe"]), row["order"], str(row["tokens_per_step"]),
                 f"{row['gen_nll']:.3f} ± {_number(row['gen_nll_se'])}", f"{row['excess']:+.3f}",
                 _difference(row), f"{row['unigram_entropy']:.3f} ± {_number(row['unigram_entropy_se'])}",
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
    exact = next(row for row in results["first_hitting"] if row["tokens_per_step"] == 1)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    # variants of one NFE side by side, a little apart, so that their error bars stay readable
    for offset, (order, label) in zip((0.94, 1.0, 1.06), (("1", "order 1"), ("2", "order 2"),
                                                          ("pc", "predictor-corrector"))):
        rows = [row for row in results["first_hitting"] if row["order"] == order and row is not exact]
        ax.errorbar([row["nfe"] * offset for row in rows], [row["gen_nll"] for row in rows],
                    yerr=[row["gen_nll_se"] for row in rows], marker="o", capsize=3, label=label)
    ax.errorbar([exact["nfe"]], [exact["gen_nll"]], yerr=[exact["gen_nll_se"]], marker="*", markersize=12,
                color="tab:red", label="exact (one token per call)")
    ax.axhline(results["language"]["nll"], color="black", label="exact samples")
    ax.set(xscale="log", xlabel="network calls (NFE)", ylabel="gen NLL (nats per token)",
           title=f"first-hitting at equal cost, {results['config']['first_hitting_samples']} sequences each")
    levels = sorted({row["nfe"] for row in results["first_hitting"]})
    ax.set_xticks(levels, [str(level) for level in levels])
    ax.minorticks_off()
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
class _Unset:
    """The default of an option that means another thing with ``--checkpoint``: its value on the
    synthetic language, kept apart from a value given on the command line."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def add_arguments(parser: argparse.ArgumentParser, preset: ReproduceConfig) -> None:
    """Every ReproduceConfig field as an option, defaulting to ``preset``'s value; the full
    reproduction also takes a released checkpoint (:mod:`mdm_ext.paper`)."""
    add_options(parser, ReproduceConfig, preset)
    if preset is FULL:
        paper.add_arguments(parser)
        parser.set_defaults(**{name: _Unset(getattr(preset, name)) for name in paper.SHARED})


def config_from(args: argparse.Namespace) -> Union[ReproduceConfig, paper.PaperConfig]:
    """The run the options describe: the paper's protocol on ``--checkpoint`` when given, else
    the synthetic reproduction."""
    unset = {name for name in paper.SHARED if isinstance(getattr(args, name, None), _Unset)}
    if getattr(args, "checkpoint", None) is not None:
        return paper.config_from(args, {name: getattr(args, name) for name in paper.SHARED if name not in unset})
    values = argparse.Namespace(**{**vars(args), **{name: getattr(args, name).value for name in unset}})
    return from_options(ReproduceConfig, values)


def run(args: argparse.Namespace) -> None:
    """``mdm-ext demo`` / ``mdm-ext reproduce``: run, print the report, write the files (the
    report is printed first, so that a failed write loses no result)."""
    config = config_from(args)
    if isinstance(config, paper.PaperConfig):
        paper.run(config)
        return
    results = reproduce(config)
    print(markdown(results), flush=True)
    paths = write(results, config.out)
    print(f"wrote {', '.join(str(path) for path in paths)}")
