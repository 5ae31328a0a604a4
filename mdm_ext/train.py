"""Training of masked diffusion models and of their autoregressive baseline: :func:`train` as a
library function, ``mdm-ext train`` or ``python -m mdm_ext.train`` as a command, and
``torchrun --nproc_per_node=N -m mdm_ext.train ...`` for data parallelism.

Token ids of the data are 0..V-1 (V = ``dataset.vocab_size``) and the mask token is V, so the
network has V + 1 logits. The autoregressive baseline (``causal=True``) is the same backbone with
causal attention and the same V + 1 ids, the mask id serving as its beginning-of-sequence token
and its mask column left out of the softmax: the two families have the same parameters and losses
in the same unit (nats per token over all L tokens).

A non-finite loss or weight stops the run with :class:`TrainingDiverged` before it can replace
a checkpoint: the last one written stays as it was.

Resuming is exact: every random draw of step k (batch windows, noise levels, masks, dropout)
is a pure function of (seed, k, rank), so a checkpoint needs no RNG state, and a run killed
after a checkpoint and restarted with the same ``out`` ends with the same weights, bit for bit,
as an uninterrupted run (same device type, world size and thread count; on CUDA, with
deterministic kernels: ``torch.use_deterministic_algorithms(True)`` and
``CUBLAS_WORKSPACE_CONFIG=:4096:8``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from .data import TOKEN_DTYPES, ByteTokenizer, TokenDataset, token_dtype, write_tokens
from .denoiser import Denoiser
from .files import UnusableFile, load_checked, save_atomic, write_atomic
from .language import MarkovLanguage
from .loss import OBJECTIVES, autoregressive_loss, masked_diffusion_loss
from .models import PRESETS, Transformer, TransformerConfig
from .options import add_options, at_least, check_config, existing_file, from_options, option
from .processes import process_device, process_group
from .schedules import SCHEDULES

CHECKPOINT_NAME = "checkpoint.pt"
# GPT-2 practice: beta2 below Adam's 0.999 keeps the second moment responsive to loss spikes.
ADAM_BETAS = (0.9, 0.95)
# Fields that may change when a run is resumed: none of them alters the trained weights.
RESUMABLE_CHANGES = ("out", "device", "eval_every", "eval_batches", "checkpoint_every")
# Keys of the seeds derived from config.seed (the training windows use config.seed itself).
_TRAIN_STREAM, _EVAL_STREAM = 1, 2
# The synthetic language of the command line: 2^20 training and 2^16 held-out tokens, drawn as
# chains of 4096 tokens (a window that straddles two chains sees a fresh start from pi).
MARKOV_CHAIN_LENGTH = 4096
MARKOV_TRAIN_CHAINS, MARKOV_EVAL_CHAINS = 256, 16
DEFAULT_MARKOV_VOCAB = 64
# The share of --text held out for evaluation: the last 1 / TEXT_EVAL_SHARE of its bytes.
TEXT_EVAL_SHARE = 10


@dataclass
class TrainConfig:
    """One training run; every field is also a command-line option (``--batch-size`` ...)."""

    model: str = option("tiny", "backbone size", choices=tuple(PRESETS))
    causal: bool = option(False, "train the autoregressive baseline (causal attention, "
                                  "next-token loss) instead of a masked diffusion model")
    objective: str = option("time_agnostic", "masked diffusion loss", choices=OBJECTIVES)
    schedule: str = option("alpha_linear", "masking schedule of the loss", choices=SCHEDULES)
    stratified: bool = option(True, "spread the batch's noise levels over [0, 1) evenly")
    length: int = option(128, "tokens per training sequence")
    batch_size: int = option(32, "sequences per step on each process")
    steps: int = option(1000, "optimizer steps; the learning-rate schedule spans them")
    lr: float = option(3e-4, "peak learning rate")
    weight_decay: float = option(0.1, "AdamW weight decay of weight matrices and embeddings")
    warmup: int = option(100, "steps of linear learning-rate warm-up")
    min_lr_ratio: float = option(0.1, "the cosine decay ends at lr * min_lr_ratio")
    grad_clip: float = option(1.0, "maximum global gradient norm; 0 turns clipping off")
    ema_decay: float = option(0.999, "decay of the weights' moving average; 0 turns it off")
    dropout: float = option(0.0, "dropout probability")
    eval_every: int = option(100, "steps between evaluations (also at step 0 and at the end)")
    eval_batches: int = option(4, "batches of batch_size sequences per evaluation")
    checkpoint_every: int = option(500, "steps between checkpoints (also at the end)")
    out: Optional[str] = option(None, "folder of checkpoint.pt; None: no checkpoints")
    seed: int = option(0, "seed of the weights, batches, masks and dropout")
    device: str = option("auto", "cpu, cuda, cuda:N, or auto (this rank's GPU when there is one per process)")

    def __post_init__(self) -> None:
        positive = ("length", "batch_size", "steps", "eval_every", "eval_batches", "checkpoint_every")
        rules = (
            *((name, getattr(self, name) >= 1, ">= 1") for name in positive),
            ("lr", self.lr > 0, "> 0"),
            *((name, getattr(self, name) >= 0, ">= 0")
              for name in ("weight_decay", "warmup", "grad_clip", "seed")),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
            ("ema_decay", 0 <= self.ema_decay < 1, "in [0, 1)"),
            ("dropout", 0 <= self.dropout < 1, "in [0, 1)"),
        )
        check_config(self, rules)


class TrainingDiverged(FloatingPointError):
    """The loss or the weights stopped being finite: raised before any checkpoint holds them."""


@dataclass
class TrainResult:
    """What a call of :func:`train` leaves: this process's models and its part of the record."""

    model: Transformer  # the trained weights, in train mode
    ema: Optional[Transformer]  # their moving average (None with ema_decay = 0), in eval mode
    mask_id: int
    step: int  # optimizer steps completed, resumed ones included
    losses: list[float]  # training loss of each step this call ran, on this process's batches
    eval_history: list[dict[str, float]]  # {"step", "loss"[, "ema_loss"]}, made on rank 0 only
    checkpoint: Optional[Path]
    rank: int


def lr_factor(step: int, config: TrainConfig) -> float:
    """Learning rate of step ``step`` (from 0) over ``config.lr``: a linear warm-up to 1, then a
    cosine decay to ``config.min_lr_ratio`` at ``config.steps``."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = min((step - config.warmup) / max(config.steps - config.warmup, 1), 1.0)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def train(config: TrainConfig, dataset: TokenDataset, *, eval_dataset: Optional[TokenDataset] = None,
          until: Optional[int] = None, progress: bool = False) -> TrainResult:
    """Train a :class:`~mdm_ext.models.Transformer` on random windows of ``dataset``.

    Args:
        dataset: training tokens; ``dataset.vocab_size`` must be set (the mask id is that value).
        eval_dataset: held-out tokens for the evaluations; None evaluates on windows of
            ``dataset`` drawn under another seed, which are not held out.
        until: stop after this many steps in all, e.g. to fit a job's time limit; the learning
            rate still follows the schedule of ``config.steps``, and a later call with the same
            ``config.out`` carries on.
        progress: show a progress bar and the evaluations (on rank 0).

    If ``config.out`` holds a checkpoint, training resumes from it (its config must match,
    except for the fields in ``RESUMABLE_CHANGES``). Under torchrun (WORLD_SIZE > 1), each
    process trains on its own batches with DistributedDataParallel (gloo on CPU, nccl on CUDA);
    only rank 0 evaluates and writes checkpoints. Seeds torch's global random number generators.
    """
    for name, data in (("dataset", dataset), ("eval_dataset", eval_dataset)):
        if data is not None and data.vocab_size is None:
            raise ValueError(f"{name}.vocab_size is None: open the TokenDataset with vocab_size=")
    mask_id = dataset.vocab_size
    if eval_dataset is not None and eval_dataset.vocab_size != mask_id:
        raise ValueError(f"eval_dataset.vocab_size ({eval_dataset.vocab_size}) must equal "
                         f"dataset.vocab_size ({mask_id})")
    if until is not None and not 0 <= until <= config.steps:
        raise ValueError(f"until must be in [0, config.steps = {config.steps}], got {until}")
    for data in (dataset, eval_dataset):
        if data is not None and len(data) < config.length:
            raise ValueError(f"length must be at most the {len(data)} tokens of {data.path}, got {config.length}")
    stop = config.steps if until is None else until

    device = process_device(config.device)
    with process_group(device):
        return _train(config, dataset, eval_dataset, mask_id, stop, device, progress)


def _train(config: TrainConfig, dataset: TokenDataset, eval_dataset: Optional[TokenDataset],
           mask_id: int, stop: int, device: torch.device, progress: bool) -> TrainResult:
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = Transformer(TransformerConfig.preset(
        config.model, vocab_size=mask_id + 1, max_len=config.length, causal=config.causal,
        dropout=config.dropout)).to(device)
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay),
                         use_buffers=True) if config.ema_decay > 0 else None)
    # no decay of biases and LayerNorm gains, which set scales rather than features
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": config.weight_decay},
         {"params": vectors, "weight_decay": 0.0}],
        lr=config.lr, betas=ADAM_BETAS, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))

    checkpoint = Path(config.out) / CHECKPOINT_NAME if config.out is not None else None
    start, eval_history = 0, []
    if checkpoint is not None and checkpoint.exists():
        state = load_checked(checkpoint)
        _check_resumable(state, config, world_size, checkpoint)
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, eval_history = state["step"], state["eval_history"] if rank == 0 else []

    network = model
    if world_size > 1:
        network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    window = config.length
    eval_source = eval_dataset if eval_dataset is not None else dataset
    eval_seed = _derived_seed(config.seed, _EVAL_STREAM)
    eval_windows = [eval_source.batch(i, config.batch_size, window, seed=eval_seed).to(device)
                    for i in range(config.eval_batches)] if rank == 0 else []
    bar = tqdm(total=config.steps, initial=start, disable=not (progress and rank == 0), desc="train")
    losses: list[torch.Tensor] = []
    saved = start if checkpoint is not None and checkpoint.exists() else None  # the step on disk
    checked = 0  # losses[:checked] are known to be finite

    def evaluate(step: int) -> None:
        record = {"step": step, "loss": _evaluate(model, eval_windows, config, mask_id)}
        if ema is not None:
            record["ema_loss"] = _evaluate(ema.module, eval_windows, config, mask_id)
        eval_history.append(record)
        if progress:
            line = f"step {step}: eval loss {record['loss']:.4f}"
            if ema is not None:
                line += f" (moving average {record['ema_loss']:.4f})"
            if losses:
                line += f", train loss {torch.stack(losses[-config.eval_every:]).mean().item():.4f}"
            bar.write(line)

    try:  # the bar ends before an error is reported below it
        if rank == 0 and start == 0:
            evaluate(0)
        for step in range(start, stop):
            torch.manual_seed(_derived_seed(config.seed, _TRAIN_STREAM, step, rank))
            x = dataset.batch(step, config.batch_size, window, seed=config.seed, rank=rank,
                              world_size=world_size).to(device, non_blocking=True)
            with _autocast(device):
                loss = _loss(network, x, config, mask_id)
            loss.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            losses.append(loss.detach())
            bar.update()
            done = step + 1
            evaluating = done % config.eval_every == 0 or done == config.steps
            saving = checkpoint is not None and (done % config.checkpoint_every == 0 or done == stop)
            if evaluating or saving:  # on every rank, so that all of them stop together
                _check_finite(model, losses[checked:], start + checked + 1, done, checkpoint, saved, config)
                checked = len(losses)
            if rank == 0 and evaluating:
                evaluate(done)
            if rank == 0 and saving:
                save_atomic(_checkpoint_state(config, model, ema, optimizer, scheduler, done, eval_history,
                                               world_size), checkpoint)
                saved = done
    finally:
        bar.close()
    return TrainResult(
        model=model, ema=ema.module.eval() if ema is not None else None, mask_id=mask_id,
        step=max(start, stop), losses=torch.stack(losses).tolist() if losses else [],
        eval_history=eval_history, checkpoint=checkpoint, rank=rank)


def _check_finite(model: Transformer, losses: list[torch.Tensor], first_step: int, done: int,
                  checkpoint: Optional[Path], saved: Optional[int], config: TrainConfig) -> None:
    """Raises TrainingDiverged, on every rank, unless the losses of steps first_step..done and
    every weight are finite (one read of the device, one all-reduce)."""
    finite_losses = torch.isfinite(torch.stack(losses))
    finite_weights = torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()
    healthy = torch.stack([finite_losses.all(), finite_weights]).to(torch.int32)
    if dist.is_initialized():
        dist.all_reduce(healthy, op=dist.ReduceOp.MIN)
    losses_finite, weights_finite = healthy.tolist()
    if losses_finite and weights_finite:
        return
    if not finite_losses.all():
        first = int((~finite_losses).nonzero()[0])
        cause = f"the training loss is {losses[first].item()} at step {first_step + first}"
    elif not losses_finite:
        cause = "another rank's training loss is not finite"
    else:
        cause = f"the weights are not finite after step {done}"
    kept = (f"{checkpoint} still holds step {saved}" if saved is not None else "no checkpoint was written")
    raise TrainingDiverged(f"training diverged: {cause}; {kept}. Try a lower lr (now {config.lr:g}), "
                           f"a longer warmup (now {config.warmup}) or gradient clipping (grad_clip)")


def _loss(network: nn.Module, x: torch.Tensor, config: TrainConfig, mask_id: int) -> torch.Tensor:
    if config.causal:
        return autoregressive_loss(network, x, mask_id)
    # DistributedDataParallel hides the Transformer's accepts_positions, so it is stated here
    return masked_diffusion_loss(Denoiser(network, accepts_positions=True), x, mask_id,
                                 objective=config.objective, schedule=config.schedule,
                                 stratified=config.stratified)


@torch.no_grad()
def _evaluate(model: Transformer, windows: list[torch.Tensor], config: TrainConfig, mask_id: int) -> float:
    """Mean loss over the fixed evaluation windows, under the same masks at every evaluation."""
    was_training = model.training
    model.eval()
    torch.manual_seed(_derived_seed(config.seed, _EVAL_STREAM))
    with _autocast(windows[0].device):
        loss = torch.stack([_loss(model, x, config, mask_id) for x in windows]).mean().item()
    model.train(was_training)
    return loss


def _autocast(device: torch.device) -> torch.autocast:
    # bf16 on CUDA only, where it speeds matmuls up; on CPU it is slower than float32
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _derived_seed(*key: int) -> int:
    """A seed in [0, 2^63) hashed from integers: nearby keys give unrelated streams."""
    return int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _checkpoint_state(config: TrainConfig, model: Transformer, ema: Optional[AveragedModel],
                      optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                      step: int, eval_history: list[dict[str, float]], world_size: int) -> dict:
    """Tensors and plain containers only, so that ``torch.load(weights_only=True)`` reads it."""
    return {
        "step": step, "config": asdict(config), "model_config": asdict(model.config),
        "world_size": world_size, "model": model.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "eval_history": eval_history,
    }


def _check_resumable(state: dict, config: TrainConfig, world_size: int, path: Path) -> None:
    saved = dict(state["config"])
    if saved.get("schedule") == "linear":  # checkpoints from before the name became alpha_linear
        saved["schedule"] = "alpha_linear"
    changed = [name for name, value in asdict(config).items()
               if name not in RESUMABLE_CHANGES and saved.get(name) != value]
    if changed:
        raise UnusableFile(path, f"was written with another config (it differs in {', '.join(changed)}): "
                                 f"resume with the same settings or use another out folder")
    if state["world_size"] != world_size:
        raise UnusableFile(path, f"was written by {state['world_size']} processes, this run has "
                                 f"{world_size}: exact resumption needs the same number")


def load_model(path: str | os.PathLike, *, ema: bool = True,
               map_location: str | torch.device = "cpu") -> Transformer:
    """The network of a checkpoint, in eval mode: the moving average of its weights when it has
    one and ``ema`` is True, else the trained weights. Its mask id is ``config.vocab_size - 1``.
    Raises UnusableFile for a file that is not a checkpoint or fails its checksum."""
    state = load_checked(path)
    if not {"model_config", "model", "ema"} <= state.keys():
        raise UnusableFile(path, "is not a checkpoint of mdm-ext train (it has no model_config, model and ema)")
    model = Transformer(TransformerConfig(**state["model_config"]))
    if ema and state["ema"] is not None:
        # AveragedModel keeps the network under "module." beside its update count
        weights = {key.removeprefix("module."): value for key, value in state["ema"].items()
                   if key.startswith("module.")}
    else:
        weights = state["model"]
    model.load_state_dict(weights)
    return model.to(map_location).eval()


# Command line.
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mdm-ext train``: a data source and every TrainConfig field."""
    data = parser.add_argument_group("data (default: a synthetic Markov language, made offline)")
    source = data.add_mutually_exclusive_group()
    source.add_argument("--data", metavar="FILE.bin", type=existing_file, help="token file of flat ids "
                        "(nanoGPT layout); needs --vocab-size")
    source.add_argument("--text", metavar="FILE.txt", type=existing_file, help="UTF-8 text, as bytes "
                        f"(ids 0..255, mask 256); the last 1/{TEXT_EVAL_SHARE} is held out")
    source.add_argument("--markov", type=at_least(2), metavar="K", help="MarkovLanguage.random(K, seed=0) "
                        f"(default K = {DEFAULT_MARKOV_VOCAB})")
    data.add_argument("--dtype", default="uint16", choices=TOKEN_DTYPES, help="ids of --data "
                      "and --eval-data (default: uint16)")
    data.add_argument("--vocab-size", type=at_least(1), help="ids of --data lie in [0, vocab_size); "
                      "the mask id is vocab_size")
    data.add_argument("--eval-data", metavar="FILE.bin", type=existing_file, help="held-out token file "
                      "for --data")
    parser.add_argument("--out", default="mdm_ext_out/train", help="folder of the checkpoint, "
                        "result.json and generated data (default: ./mdm_ext_out/train)")
    add_options(parser.add_argument_group("training"), TrainConfig, skip=("out",))


def run(args: argparse.Namespace) -> None:
    """``mdm-ext train``: train on the chosen data, then write result.json beside the checkpoint."""
    config = from_options(TrainConfig, args)
    dataset, eval_dataset = _datasets(args, config)
    result = train(config, dataset, eval_dataset=eval_dataset, progress=True)
    if result.rank != 0:
        return
    summary = {"step": result.step, "mask_id": result.mask_id, "checkpoint": str(result.checkpoint),
               "config": asdict(config), "eval_history": result.eval_history}
    first, last = result.eval_history[0], result.eval_history[-1]
    print(f"eval loss {first['loss']:.4f} at step {first['step']} -> {last['loss']:.4f} at step "
          f"{last['step']} (nats per token); checkpoint {result.checkpoint}")
    write_atomic(Path(config.out) / "result.json", lambda file: file.write(json.dumps(summary, indent=2).encode()))


def _datasets(args: argparse.Namespace, config: TrainConfig) -> tuple[TokenDataset, Optional[TokenDataset]]:
    """Training and held-out data of the command line. Generated files are written once: a
    later run (a resumed one, every process of a torchrun job) finds them and reads them."""
    if args.data is None:
        for name in ("vocab_size", "eval_data"):
            if getattr(args, name) is not None:
                raise ValueError(f"{name} applies to --data only, got {getattr(args, name)!r}")
    if args.data is not None:
        if args.vocab_size is None:
            raise ValueError("data needs --vocab-size (its ids lie in [0, vocab_size))")
        eval_dataset = (TokenDataset(args.eval_data, args.dtype, args.vocab_size)
                        if args.eval_data is not None else None)
        return TokenDataset(args.data, args.dtype, args.vocab_size), eval_dataset
    folder = Path(args.out) / "data"
    if args.text is not None:
        ids = _text_ids(args.text, config.length)
        split = len(ids) - len(ids) // TEXT_EVAL_SHARE
        vocab_size = ByteTokenizer.mask_id
        # write_tokens leaves a file that holds these ids already as it is
        return tuple(TokenDataset(folder / f"text-{name}.bin", write_tokens(folder / f"text-{name}.bin", part),
                                  vocab_size) for name, part in (("train", ids[:split]), ("eval", ids[split:])))
    language = MarkovLanguage.random(DEFAULT_MARKOV_VOCAB if args.markov is None else args.markov, seed=0)
    return tuple(_markov_tokens(folder / f"markov{language.vocab_size}-{name}.bin", language, chains, seed)
                 for name, chains, seed in (("train", MARKOV_TRAIN_CHAINS, 1), ("eval", MARKOV_EVAL_CHAINS, 2)))


def _text_ids(path: str, length: int) -> np.ndarray:
    """The bytes of the UTF-8 text file ``path`` as ids, after checking it holds enough of them:
    ``length`` tokens each for training and evaluation."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"text must be UTF-8 text, got byte {data[error.start]:#04x} at offset "
                         f"{error.start} of {path}") from None
    needed = TEXT_EVAL_SHARE * length
    if len(data) < needed:
        raise ValueError(f"text must hold at least {TEXT_EVAL_SHARE} x length = {needed} bytes (the last "
                         f"1/{TEXT_EVAL_SHARE} is held out), got {len(data)} in {path}")
    return np.frombuffer(data, dtype=np.uint8)


def _markov_tokens(path: Path, language: MarkovLanguage, chains: int, seed: int) -> TokenDataset:
    """``chains`` chains of ``language`` drawn under ``seed``, as the token file ``path``: drawn
    and written unless an earlier run left that file (written atomically, so whole), which is
    then only checked for its size and ids."""
    dtype, size = token_dtype(language.vocab_size), chains * MARKOV_CHAIN_LENGTH
    if path.is_file() and path.stat().st_size == size * dtype.itemsize:
        dataset = TokenDataset(path, dtype, language.vocab_size)
        if int(dataset.tokens.max()) < language.vocab_size:
            return dataset
    ids = language.sample(chains, MARKOV_CHAIN_LENGTH, generator=torch.Generator().manual_seed(seed)).flatten()
    return TokenDataset(path, write_tokens(path, ids, dtype), language.vocab_size)


def main(argv: Optional[list[str]] = None) -> None:
    """``python -m mdm_ext.train ...``: the same as ``mdm-ext train ...``."""
    from . import cli

    cli.main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
