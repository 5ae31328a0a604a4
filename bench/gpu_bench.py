"""GPU check and timing of every kernel: ``python bench/gpu_bench.py`` on a CUDA machine.

Each kernel is first checked against its reference (exact equality with the CPU kernel for the
samplers and the position choice, which share the Philox stream; allclose for the softmax
family), then timed with CUDA events (median of 20). Achieved bandwidth = the bytes the op must
move at least (one read of the logits for a draw, a read and a write for a softmax) / time,
printed next to the measured device-to-device copy bandwidth: the floor of a one-pass kernel.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from mdm_ext import ops


def cuda_median_ms(fn, repeats: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth_gbs(nbytes: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * nbytes / cuda_median_ms(lambda: dst.copy_(src)) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=50257)
    args = parser.parse_args()
    rows, vocab = args.rows, args.vocab
    torch.manual_seed(0)
    logits = 3 * torch.randn(rows, vocab, device="cuda")
    nbytes = logits.numel() * logits.element_size()
    copy_gbs = copy_bandwidth_gbs(nbytes)
    print(f"{torch.cuda.get_device_name()}: [{rows}, {vocab}] float32, copy bandwidth {copy_gbs:.0f} GB/s")

    check = logits[:256]
    for legacy in (False, True):
        same = torch.equal(ops.gumbel_argmax(check, seed=3, legacy_float32=legacy).cpu(),
                           ops.gumbel_argmax(check.cpu(), seed=3, legacy_float32=legacy))
        print(f"gumbel_argmax legacy={legacy}: CUDA == CPU: {same}")
    probs = check.softmax(-1)
    print(f"categorical: CUDA == CPU: {torch.equal(ops.categorical(probs, seed=3).cpu(), ops.categorical(probs.cpu(), seed=3))}")
    tokens = torch.where(torch.rand(64, 1024, device="cuda") < 0.5, 7, 0)
    for k in (1, 5, 2000):
        same = torch.equal(ops.choose_masked(tokens, 7, k, seed=3).cpu(), ops.choose_masked(tokens.cpu(), 7, k, seed=3))
        print(f"choose_masked k={k}: CUDA == CPU: {same}")
    ref_log_softmax = logits[:, : vocab - 1].log_softmax(-1)
    print(f"masked_log_softmax allclose: "
          f"{torch.allclose(ops.masked_log_softmax(logits, vocab - 1)[:, : vocab - 1], ref_log_softmax, atol=1e-5)}")
    target = torch.randint(0, vocab - 1, (rows,), device="cuda")
    ref_ce = torch.nn.functional.cross_entropy(logits[:, : vocab - 1], target, reduction="none")
    print(f"masked_cross_entropy allclose: {torch.allclose(ops.masked_cross_entropy(logits, target, vocab - 1), ref_ce, atol=1e-4)}")

    def float64_reference():
        u = torch.rand_like(logits, dtype=torch.float64)
        return (logits.double() - torch.log(-torch.log(u))).argmax(-1)

    all_probs = logits.softmax(-1)
    positions = tokens[:32]
    rows_out = [
        ("gumbel_argmax (float64-accurate)", lambda: ops.gumbel_argmax(logits, seed=1), nbytes),
        ("categorical (probs)", lambda: ops.categorical(all_probs, seed=1), nbytes),
        ("legacy float32 recipe (kernel)", lambda: ops.gumbel_argmax(logits, seed=1, legacy_float32=True), nbytes),
        ("masked_log_softmax", lambda: ops.masked_log_softmax(logits, vocab - 1), 2 * nbytes),
        ("masked_cross_entropy fwd", lambda: ops.masked_cross_entropy(logits, target, vocab - 1), nbytes),
        ("torch float64 Gumbel reference", float64_reference, nbytes),
        ("choose_masked [32, 1024], k = 1 (per sampler step)", lambda: ops.choose_masked(positions, 7, 1, seed=1),
         positions.numel() * 8),
    ]
    print("| kernel | median ms | GB/s | % of copy |")
    print("|---|---|---|---|")
    for name, fn, moved in rows_out:
        ms = cuda_median_ms(fn)
        gbs = moved / ms / 1e6
        print(f"| {name} | {ms:.3f} | {gbs:.0f} | {100 * gbs / copy_gbs:.0f}% |")


if __name__ == "__main__":
    main()
