"""Sampler timings in the paper's setting: ``python bench/gpu_samplers.py`` on a CUDA machine.

A 12-layer, 768-wide bidirectional backbone (random weights; about 170M parameters with its
untied 50258-way head), L = 1024, |V| = 50257. For each batch size, the cached ancestral sampler
at N steps (float64-accurate draws) is timed against exact first-hitting (L network calls), and
first-hitting's own overhead (everything but the network) is its wall time less the time spent
inside the network, measured around each call (synchronised on CUDA). ``--torch-draw`` adds the
ancestral runs again with each categorical drawn by PyTorch's float64 Gumbel-max
(``reference.gumbel_argmax_ref``), the draw of MDM codebases: the cost profile behind the
paper's ratio (memory: a few float64 copies of [masked positions, |V|]; use it at batch 1).
``--device cpu --preset tiny --length 64`` checks the script anywhere.
"""
from __future__ import annotations

import argparse
import contextlib
import time
from typing import Iterator

import torch

from mdm_ext import ops, reference, sample
from mdm_ext.models import Transformer, TransformerConfig


class TimedNetwork(torch.nn.Module):
    """The model, recording the seconds spent in it (synchronised on CUDA)."""

    accepts_positions = True

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model
        self.seconds = 0.0

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
        sync()
        start = time.perf_counter()
        logits = self.model(x, positions)
        sync()
        self.seconds += time.perf_counter() - start
        return logits


@contextlib.contextmanager
def torch_draws() -> Iterator[None]:
    """The samplers' token draws done by PyTorch's float64 Gumbel-max for the duration."""
    fast = ops.gumbel_argmax

    def draw(scores, *, temperature=1.0, exclude=None, seed=None, offset=0, legacy_float32=False):
        return reference.gumbel_argmax_ref(scores, temperature=temperature, exclude=exclude)
    ops.gumbel_argmax = draw
    try:
        yield
    finally:
        ops.gumbel_argmax = fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--torch-draw", action="store_true", help="also time ancestral with torch's float64 draw")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = TransformerConfig.preset(args.preset, vocab_size=args.vocab + 1, max_len=args.length)
    model = Transformer(config).to(args.device, getattr(torch, args.dtype)).eval()
    network = TimedNetwork(model)
    print(f"{torch.cuda.get_device_name() if args.device == 'cuda' else args.device}: "
          f"{model.num_parameters() / 1e6:.1f}M parameters, L = {args.length}, |V| = {args.vocab}, {args.dtype}")
    print("| batch | sampler | NFE | categorical draws | seconds | network s | overhead | FHS speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    options = dict(length=args.length, mask_id=args.vocab, seed=0)
    # one-time costs (kernel loading, library handles) outside the timed runs
    warm_up = {**options, "length": min(16, args.length)}
    sample.first_hitting(network, batch_size=max(args.batch), **warm_up)
    sample.ancestral(network, batch_size=max(args.batch), steps=4, **warm_up)
    for batch in args.batch:
        rows = []
        runs = [("first_hitting", lambda: sample.first_hitting(network, batch_size=batch, **options))]
        runs += [(f"ancestral N={n}", (lambda n: lambda: sample.ancestral(network, batch_size=batch, steps=n, **options))(n))
                 for n in args.steps]
        if args.torch_draw:
            runs += [(f"{name}, torch float64 draw", run) for name, run in runs[1:]]
        for name, run in runs:
            network.seconds = 0.0
            with torch_draws() if name.endswith("torch float64 draw") else contextlib.nullcontext():
                result = run()
            rows.append((name, result, network.seconds))
        fhs_seconds = rows[0][1].seconds
        for name, result, network_seconds in rows:
            overhead = 1 - network_seconds / result.seconds
            print(f"| {batch} | {name} | {result.nfe} | {result.categorical_draws} | {result.seconds:.2f} | "
                  f"{network_seconds:.2f} | {overhead:.1%} | {result.seconds / fhs_seconds:.1f}x |")


if __name__ == "__main__":
    main()
