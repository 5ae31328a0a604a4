"""Typed wrappers of the compiled kernels (``torch.ops.mdm_ext``).

Each op's meaning is defined by its pure-PyTorch reference in :mod:`mdm_ext.reference`.
Randomness is counter-based (Philox4x32-10): the draw for row ``r`` depends only on
``(seed, offset, r)`` and the row's scores, so the same ``seed`` and ``offset`` give the same
samples on CPU and CUDA, whatever the thread layout. With ``seed=None`` a seed is drawn from
torch's default generator, so ``torch.manual_seed`` makes runs reproducible; use distinct
``offset`` values for independent draws under one seed.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from . import _C, checks
from . import schedules

__all__ = [
    "gumbel_argmax", "categorical", "masked_log_softmax", "masked_cross_entropy",
    "first_hit_times", "choose_masked", "draw_seed", "built_with_cuda",
]

_LOGITS, _PROBS = 0, 1
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_MAX_OFFSET = 2**56
_ops = torch.ops.mdm_ext


def built_with_cuda() -> bool:
    """Whether this build of the extension holds the CUDA kernels."""
    return _C.built_with_cuda()


def draw_seed(generator: Optional[torch.Generator] = None) -> int:
    """A seed in [0, 2^63) from ``generator`` (torch's default generator when None)."""
    return int(torch.randint(0, 2**63 - 1, (), generator=generator, dtype=torch.int64))


def _check_device(**tensors: torch.Tensor) -> None:
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        named = ", ".join(f"{name} on {t.device}" for name, t in tensors.items())
        raise ValueError(f"tensors must be on one device, got {named}")
    device = devices.pop()
    if device.type == "cuda" and not built_with_cuda():
        raise RuntimeError(
            "mdm_ext was built without its CUDA kernels; reinstall on a machine with a CUDA "
            "toolkit and a CUDA build of torch (MDM_EXT_CUDA=1 pip install --no-build-isolation -e .)"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"mdm_ext ops run on CPU or CUDA tensors, got {device}")


def _check_scores(scores: torch.Tensor, name: str) -> None:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {scores.dtype}")
    if scores.dim() == 0 or scores.shape[-1] == 0:
        raise ValueError(f"{name} must have shape [..., V] with V >= 1, got {tuple(scores.shape)}")
    _check_device(**{name: scores})


def _randomness(seed: Optional[int], offset: int) -> tuple[int, int]:
    if seed is None:
        seed = draw_seed()
    if not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed must be in [0, 2^63), got {seed}")
    if not 0 <= int(offset) < _MAX_OFFSET:
        raise ValueError(f"offset must be in [0, 2^56), got {offset}")
    return int(seed), int(offset)


def _broadcasts_to(shape: torch.Size, target_shape: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(shape, target_shape) == target_shape
    except RuntimeError:
        return False


def _token_id(value: Optional[int], vocab: int, name: str) -> int:
    if value is None:
        return -1
    if not 0 <= int(value) < vocab:
        raise ValueError(f"{name} must be in [0, V = {vocab}), got {value}")
    return int(value)


def gumbel_argmax(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    exclude: Optional[int] = None,
    seed: Optional[int] = None,
    offset: int = 0,
    legacy_float32: bool = False,
) -> torch.Tensor:
    """One draw per row from softmax(logits / temperature), float64-accurate, in one pass.

    Args:
        logits: [..., V] float32/float64/float16/bfloat16, any strides.
        temperature: >= 0; 0 returns the argmax (first index among ties), while any
            temperature > 0, however small, draws among tied maxima uniformly in the limit.
        exclude: a token id never drawn (e.g. the [MASK] id), or None.
        seed, offset: the Philox stream; seed None draws one from torch's default generator.
        legacy_float32: reproduce the common float32 recipe
            ``(p / (1e-10 - log(u + 1e-10))).argmax()`` with 24-bit uniforms, whose Gumbel noise
            stops at 16.64, to measure its bias (its exact distribution:
            ``reference.legacy_float32_probs``). Not for sampling.

    Returns:
        int64 indices [...].

    Raises ValueError for a row with a NaN or +inf logit, or with no finite logit left after
    ``exclude``. Rows of a [0, V] input give an empty result.

    Exactness: the kernel draws a block of 256 tokens with probability proportional to its
    float64 mass (Gumbel-max over float32 upper bounds of the block masses, then a float64
    acceptance test; see csrc/categorical.h), then a token of that block by float64 Gumbel-max.
    The float32 bounds hold with room to spare: each term e^{(x - max)/T} carries at most three
    float32 roundings in its exponent (|error| <= 3 * 2^-24 * 87 below the flush-to-zero point
    at -87) and the canonical 13-deep summation adds at most 13 * 2^-24, under 2e-5 in all,
    against a slack of 1e-4. The result follows softmax up to float64 rounding, like the
    float64 reference ``argmax(logits.double() / T - log(-log(u)))`` (``reference.gumbel_argmax_ref``;
    exact probabilities: ``reference.sampling_probs``), at two reads of the logits (the first
    finds the row maximum: every score is (logit - max) / T, so no logit up to the float64
    maximum, and no temperature down to the smallest positive float, overflows).
    """
    _check_scores(logits, "logits")
    if not (temperature >= 0 and temperature < float("inf")):
        raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
    exclude_id = _token_id(exclude, logits.shape[-1], "exclude")
    seed, offset = _randomness(seed, offset)
    return _ops.sample_categorical.default(
        logits, _LOGITS, float(temperature), exclude_id, seed, offset, bool(legacy_float32)
    )


def categorical(
    probs: torch.Tensor,
    *,
    seed: Optional[int] = None,
    offset: int = 0,
    legacy_float32: bool = False,
) -> torch.Tensor:
    """One draw per row from probabilities proportional to ``probs`` [..., V] (unnormalised
    and zeros allowed): a drop-in, float64-accurate replacement for the
    ``_sample_categorical(probs)`` helper of MDM codebases. Returns int64 [...].

    Raises ValueError for a negative, NaN or infinite entry, or an all-zero row; any finite
    entries are fine, up to the float64 maximum (the row is rescaled by a power of two).
    """
    _check_scores(probs, "probs")
    seed, offset = _randomness(seed, offset)
    return _ops.sample_categorical.default(probs, _PROBS, 1.0, -1, seed, offset, bool(legacy_float32))


def masked_log_softmax(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """log softmax over the last dim with the ``mask_id`` column excluded: its output is -inf
    and the other entries are renormalised. logits: [..., V] -> [..., V] (same dtype).
    Differentiable. NaN logits propagate, as in torch.log_softmax."""
    _check_scores(logits, "logits")
    return _ops.masked_log_softmax.default(logits, _token_id(mask_id, logits.shape[-1], "mask_id"))


def masked_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask_id: int,
    *,
    weight: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "none",
) -> torch.Tensor:
    """Fused cross-entropy ``-log p(target)`` under the masked softmax (mask column excluded).

    Args:
        logits: [..., V] float32/float64/float16/bfloat16.
        target: [...] int64 token ids in [0, V), != mask_id; ``ignore_index`` marks positions
            that carry no loss (and no gradient).
        weight: per-position weights broadcastable to [...] (e.g. 1/n of the time-agnostic
            loss); not differentiated.
        reduction: "none" ([...], float32, float64 for float64 logits), "sum", or "mean" (over
            the positions not ignored).

    The backward writes d loss / d logits = weight * grad * (softmax - onehot(target)) in one
    pass; only the logits and a [N] logsumexp are kept for it.
    """
    _check_scores(logits, "logits")
    if not isinstance(target, torch.Tensor) or target.dtype != torch.int64:
        raise TypeError(f"target must be an int64 tensor, got {getattr(target, 'dtype', type(target))}")
    if target.shape != logits.shape[:-1]:
        raise ValueError(f"target must have shape logits.shape[:-1] = {tuple(logits.shape[:-1])}, "
                         f"got {tuple(target.shape)}")
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
    _check_device(logits=logits, target=target)
    mask_id = _token_id(mask_id, logits.shape[-1], "mask_id")
    if weight is not None:
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor or None, got {type(weight).__name__}")
        _check_device(logits=logits, weight=weight)
        if not _broadcasts_to(weight.shape, target.shape):
            raise ValueError(f"weight must broadcast to the shape of target {tuple(target.shape)}, "
                             f"got {tuple(weight.shape)}")
        weight = weight.detach().to(_acc_dtype(logits.dtype)).expand(target.shape)
    loss, _ = _ops.masked_cross_entropy.default(logits, target, weight, mask_id, int(ignore_index))
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / (target != ignore_index).sum().clamp(min=1)
    return loss


def first_hit_times(
    t: torch.Tensor,
    n_masked: torch.Tensor,
    *,
    schedule: schedules.ScheduleArgument = "alpha_linear",
    seed: Optional[int] = None,
    offset: int = 0,
    validate: bool = True,
) -> torch.Tensor:
    """Next unmask time of each sequence: tau' = alpha^-1(1 - u^{1/n} (1 - alpha_t)), u ~ U[0, 1).

    Args:
        t: [B] float32/float64 current times in [0, 1].
        n_masked: [B] integer masked counts (>= 0); rows with 0 keep their time.
        schedule: a name of :mod:`mdm_ext.schedules` or a :class:`~mdm_ext.schedules.Schedule`.
        validate: check the values of t and n_masked, which reads them back from the device;
            False is for callers whose values hold by construction (a sampler's loop).

    Returns [B] times in the dtype of t.
    """
    if not isinstance(t, torch.Tensor) or t.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"t must be a float32 or float64 tensor, got {getattr(t, 'dtype', type(t))}")
    if not isinstance(n_masked, torch.Tensor) or n_masked.dtype.is_floating_point or n_masked.dtype == torch.bool:
        raise TypeError(f"n_masked must be an integer tensor, got {getattr(n_masked, 'dtype', type(n_masked))}")
    if t.dim() != 1 or n_masked.shape != t.shape:
        raise ValueError(f"t and n_masked must both have shape [B], got {tuple(t.shape)} and {tuple(n_masked.shape)}")
    _check_device(t=t, n_masked=n_masked)
    if validate and t.numel() and not bool(((t >= 0) & (t <= 1)).all()):
        raise ValueError("t must lie in [0, 1]")
    if validate and n_masked.numel() and bool((n_masked < 0).any()):
        raise ValueError("n_masked must be >= 0")
    schedule = schedules.get(schedule)
    seed, offset = _randomness(seed, offset)
    return _ops.first_hit_times.default(t, n_masked.long(), schedule.name, list(schedule.parameters), seed, offset)


def choose_masked(
    x: torch.Tensor,
    mask_id: int,
    k: Union[int, torch.Tensor],
    *,
    seed: Optional[int] = None,
    offset: int = 0,
) -> torch.Tensor:
    """Choose up to k masked positions (x == mask_id) per row, uniformly without replacement.

    Args:
        x: [B, L] int64 tokens.
        k: positions to choose per row, an int or an integer tensor [B] (>= 0); a row with
            fewer masked positions gets all of them, a row with none gets none.

    Returns a bool mask [B, L] of the chosen positions.
    """
    if not isinstance(x, torch.Tensor) or x.dtype != torch.int64:
        raise TypeError(f"x must be an int64 tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() != 2:
        raise ValueError(f"x must have shape [B, L], got {tuple(x.shape)}")
    if isinstance(k, torch.Tensor):
        # A tensor k stays where it is, so that a k on another device is reported, not copied.
        if k.dtype.is_floating_point or k.dtype == torch.bool:
            raise TypeError(f"k must be an int or an integer tensor, got {k.dtype}")
        if k.dim() > 1 or (k.dim() == 1 and k.shape[0] != x.shape[0]):
            raise ValueError(f"k must be an int or have shape [B] = [{x.shape[0]}], got {tuple(k.shape)}")
        _check_device(x=x, k=k)
        if k.numel() and bool((k < 0).any()):
            raise ValueError("k must be >= 0")
        counts = k.long().expand(x.shape[0]).contiguous()
    else:
        k = checks.integer("k", k, minimum=0)
        _check_device(x=x)
        # filled on the device: an int k costs no host-to-device copy (and no wait for one)
        counts = torch.full((x.shape[0],), k, dtype=torch.int64, device=x.device)
    seed, offset = _randomness(seed, offset)
    return _ops.choose_masked.default(x, int(mask_id), counts, seed, offset)


# Fake (meta) kernels, so the ops trace under torch.compile.
def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("mdm_ext::sample_categorical")
def _(scores, kind, temperature, exclude, seed, offset, legacy_float32):
    torch._check(scores.dim() >= 1)
    return scores.new_empty(scores.shape[:-1], dtype=torch.int64)


@torch.library.register_fake("mdm_ext::masked_log_softmax")
def _(logits, mask_id):
    return torch.empty_like(logits)


@torch.library.register_fake("mdm_ext::masked_log_softmax_backward")
def _(grad_out, out, mask_id):
    return torch.empty_like(out)


@torch.library.register_fake("mdm_ext::masked_cross_entropy")
def _(logits, target, weight, mask_id, ignore_index):
    torch._check(target.shape == logits.shape[:-1])
    acc = _acc_dtype(logits.dtype)
    return target.new_empty(target.shape, dtype=acc), logits.new_empty((target.numel(),), dtype=acc)


@torch.library.register_fake("mdm_ext::masked_cross_entropy_backward")
def _(grad_loss, logits, target, weight, lse, mask_id, ignore_index):
    return torch.empty_like(logits)


@torch.library.register_fake("mdm_ext::first_hit_times")
def _(t, n_masked, schedule, schedule_params, seed, offset):
    return torch.empty_like(t)


@torch.library.register_fake("mdm_ext::choose_masked")
def _(x, mask_id, k, seed, offset):
    return torch.empty_like(x, dtype=torch.bool)


# Autograd: each backward is itself an op.
def _log_softmax_setup(ctx, inputs, output):
    ctx.mask_id = inputs[1]
    ctx.save_for_backward(output)


def _log_softmax_backward(ctx, grad_out):
    (out,) = ctx.saved_tensors
    return _ops.masked_log_softmax_backward.default(grad_out, out, ctx.mask_id), None


torch.library.register_autograd(
    "mdm_ext::masked_log_softmax", _log_softmax_backward, setup_context=_log_softmax_setup
)


def _cross_entropy_setup(ctx, inputs, output):
    logits, target, weight, mask_id, ignore_index = inputs
    ctx.mask_id, ctx.ignore_index = mask_id, ignore_index
    ctx.save_for_backward(logits, target, weight, output[1])


def _cross_entropy_backward(ctx, grad_loss, grad_lse):
    logits, target, weight, lse = ctx.saved_tensors
    grad_logits = _ops.masked_cross_entropy_backward.default(
        grad_loss, logits, target, weight, lse, ctx.mask_id, ctx.ignore_index
    )
    return grad_logits, None, None, None, None


torch.library.register_autograd(
    "mdm_ext::masked_cross_entropy", _cross_entropy_backward, setup_context=_cross_entropy_setup
)
