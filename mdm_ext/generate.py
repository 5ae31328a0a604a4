"""``mdm-ext sample``: generation at scale, from one process or sharded across ``torchrun`` ranks.

The requested samples are cut into batches; batch b is drawn with the seed of (seed, b), and rank
r draws the batches b = r, r + W, r + 2W, ... of a W-process job. The gathered file is therefore
the same whatever the number of processes (on one device type), and every rank's seeds differ.
Rank 0 writes one file: ``tokens`` [N, L] int64 plus per-batch counters, loadable with
``torch.load(path, weights_only=True)``.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist

from . import sample
from .files import save_atomic
from .language import MarkovLanguage
from .options import add_options, at_least, existing_file
from .processes import process_device, process_group
from .sampling.first_hitting import ORDERS
from .sampling.options import PYTHON_ONLY, SamplingOptions, from_arguments
from .schedules import SCHEDULES

SAMPLERS = ("first_hitting", "ancestral", "confidence", "autoregressive")


def batch_seed(seed: int, batch: int) -> int:
    """The sampler seed of batch ``batch``: independent streams for distinct batches."""
    return int(np.random.SeedSequence(seed, spawn_key=(batch,)).generate_state(2, np.uint32).view(np.uint64)[0]
               >> np.uint64(1))


def draw_batches(draw: Callable[[int, int], sample.SampleResult], num_samples: int, batch_size: int,
                 seed: int, rank: int = 0, world_size: int = 1,
                 progress: bool = False) -> dict[int, sample.SampleResult]:
    """This rank's batches: {batch index: result}, where ``draw(size, seed)`` runs the sampler."""
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
    n_batches = -(-num_samples // batch_size)
    mine = range(rank, n_batches, world_size)
    results = {}
    for position, b in enumerate(mine):
        size = min(batch_size, num_samples - b * batch_size)
        results[b] = draw(size, batch_seed(seed, b))
        if progress:
            print(f"rank {rank}: batch {position + 1}/{len(mine)}, nfe {results[b].nfe}, "
                  f"{results[b].seconds:.2f} s", flush=True)
    return results


def assemble(results: dict[int, sample.SampleResult]) -> dict[str, torch.Tensor]:
    """All batches in order -> tokens [N, L] and per-batch counters [n_batches]."""
    ordered = [results[b] for b in sorted(results)]
    return {
        "tokens": torch.cat([r.tokens.cpu() for r in ordered]),
        "nfe": torch.tensor([r.nfe for r in ordered]),
        "categorical_draws": torch.tensor([r.categorical_draws for r in ordered]),
        "seconds": torch.tensor([r.seconds for r in ordered], dtype=torch.float64),
    }


def _network(args: argparse.Namespace, device: torch.device) -> tuple[Callable, int, bool]:
    """(denoiser, mask id, causal) of the command line: a checkpoint of ``mdm-ext train``, an
    MDLM checkpoint (Hugging Face folder or Lightning .ckpt) or the exact oracle of a Markov
    language."""
    if args.checkpoint is None:
        language = MarkovLanguage.random(args.markov, seed=args.language_seed)
        return language, language.mask_id, False
    from .dit import is_mdlm_checkpoint, load_mdlm

    if is_mdlm_checkpoint(args.checkpoint):
        network = load_mdlm(args.checkpoint, map_location=device)
        return network, network.mask_id, False
    from .train import load_model

    model = load_model(args.checkpoint, map_location=device)
    if args.length > model.config.max_len:
        raise ValueError(f"length must be at most the checkpoint's max_len = {model.config.max_len}, "
                         f"got {args.length}")
    return model, model.config.vocab_size - 1, model.config.causal


def _sampler(args: argparse.Namespace, network: Callable, mask_id: int, causal: bool,
             device: torch.device) -> Callable[[int, int], sample.SampleResult]:
    if causal != (args.sampler == "autoregressive"):
        raise ValueError(f"--sampler {args.sampler} does not fit a {'causal' if causal else 'masked'} model")
    options = from_arguments(args, device=device)
    strategy = {
        "first_hitting": dict(tokens_per_step=args.tokens_per_step, order=args.order),
        "ancestral": dict(steps=args.steps, schedule=args.schedule),
        "confidence": dict(steps=args.steps, block_length=args.block_length),
        "autoregressive": dict(bos_id=mask_id),
    }[args.sampler]
    if args.sampler != "autoregressive":
        strategy["mask_id"] = mask_id
    sampler = getattr(sample, args.sampler)
    return lambda size, seed: sampler(network, batch_size=size, length=args.length,
                                      options=dataclasses.replace(options, seed=seed), **strategy)


def checkpoint_path(text: str) -> str:
    """The type of --checkpoint: an existing file, or a Hugging Face folder (with its config.json)."""
    if Path(text).is_dir():
        if not (Path(text) / "config.json").is_file():
            raise argparse.ArgumentTypeError(f"{text!r} is a folder without a config.json, not a checkpoint")
        return text
    return existing_file(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mdm-ext sample``."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=checkpoint_path,
                        help="checkpoint.pt of mdm-ext train, or an MDLM checkpoint: a Hugging Face folder such as "
                        "kuleshov-group/mdlm-owt's, or a Lightning .ckpt (default: a Markov oracle)")
    source.add_argument("--markov", type=at_least(2), default=64, metavar="K",
                        help="sample the exact oracle of MarkovLanguage.random(K) (default 64)")
    parser.add_argument("--language-seed", type=at_least(0), default=0)
    parser.add_argument("--sampler", choices=SAMPLERS, default="first_hitting")
    parser.add_argument("--num-samples", type=at_least(1), default=64)
    parser.add_argument("--batch-size", type=at_least(1), default=16)
    parser.add_argument("--length", type=at_least(1), default=128)
    parser.add_argument("--steps", type=at_least(1), default=1000, help="ancestral / confidence steps")
    parser.add_argument("--schedule", default="loglinear", choices=SCHEDULES, help="ancestral schedule")
    parser.add_argument("--tokens-per-step", type=at_least(1), default=1, help="first-hitting tokens per call")
    parser.add_argument("--order", default="first", choices=(*ORDERS, "1", "2", "pc"), help="first-hitting order")
    parser.add_argument("--block-length", type=at_least(1), default=None, help="confidence decoding block")
    add_options(parser, SamplingOptions, skip=PYTHON_ONLY)
    parser.add_argument("--seed", type=at_least(0), default=0)
    parser.add_argument("--device", default="auto", help="auto: this rank's GPU if any, else cpu")
    parser.add_argument("--out", default="mdm_ext_out/samples.pt")
    parser.add_argument("--progress", action="store_true", help="print a line per finished batch")


def run(args: argparse.Namespace) -> None:
    """``mdm-ext sample``: draw, gather on rank 0 and write ``--out``."""
    args.order = int(args.order) if args.order in ("1", "2") else args.order
    device = process_device(args.device)
    with process_group(device):
        distributed = dist.is_initialized()
        rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        network, mask_id, causal = _network(args, device)
        draw = _sampler(args, network, mask_id, causal, device)
        results = draw_batches(draw, args.num_samples, args.batch_size, args.seed, rank, world_size,
                               progress=args.progress)
        gathered: list[Optional[dict]] = [None] * world_size
        if distributed:
            dist.gather_object({b: _to_cpu(r) for b, r in results.items()}, gathered if rank == 0 else None, dst=0)
        else:
            gathered = [results]
        if rank == 0:
            merged = {b: r for part in gathered for b, r in part.items()}
            output = assemble(merged)
            output["config"] = {key: value for key, value in vars(args).items() if key != "run"}
            output["world_size"] = world_size
            save_atomic(output, Path(args.out))
            tokens = output["tokens"]
            print(f"wrote {tokens.shape[0]} samples of length {tokens.shape[1]} to {args.out} "
                  f"({int(output['nfe'].sum())} network calls, {float(output['seconds'].sum()):.1f} s "
                  f"over {world_size} process(es))")


def _to_cpu(result: sample.SampleResult) -> sample.SampleResult:
    return dataclasses.replace(result, tokens=result.tokens.cpu(),
                               history=None if result.history is None else result.history.cpu(),
                               token_probs=None if result.token_probs is None else result.token_probs.cpu())
