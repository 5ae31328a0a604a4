"""CPU speed of each op against its PyTorch reference at realistic sizes."""
import pytest
import torch

from mdm_ext import ops

ROWS, VOCAB = 256, 50257


def float64_gumbel_reference(logits: torch.Tensor) -> torch.Tensor:
    """Today's float64 path: (logits.double() - log(-log(u))).argmax(-1)."""
    u = torch.rand_like(logits, dtype=torch.float64)
    return (logits.double() - torch.log(-torch.log(u))).argmax(-1)


def legacy_float32_reference(logits: torch.Tensor) -> torch.Tensor:
    probs = logits.softmax(-1)
    return (probs / (1e-10 - (torch.rand_like(probs) + 1e-10).log())).argmax(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gumbel_argmax(compare, dtype):
    logits = (3 * torch.randn(ROWS, VOCAB)).to(dtype)
    compare(lambda: ops.gumbel_argmax(logits, seed=0), lambda: float64_gumbel_reference(logits),
            rows=ROWS, vocab=VOCAB, dtype=str(dtype))


def test_gumbel_argmax_legacy(compare):
    logits = 3 * torch.randn(ROWS, VOCAB)
    compare(lambda: ops.gumbel_argmax(logits, seed=0, legacy_float32=True),
            lambda: legacy_float32_reference(logits), rows=ROWS, vocab=VOCAB)


def test_categorical(compare):
    probs = torch.rand(ROWS, VOCAB)
    compare(lambda: ops.categorical(probs, seed=0),
            lambda: (probs.double().log() - torch.log(-torch.log(torch.rand_like(probs, dtype=torch.float64)))).argmax(-1),
            rows=ROWS, vocab=VOCAB)


def test_masked_log_softmax(compare):
    logits = torch.randn(ROWS, VOCAB)
    mask = torch.zeros(VOCAB, dtype=torch.bool)
    mask[VOCAB - 1] = True
    compare(lambda: ops.masked_log_softmax(logits, VOCAB - 1),
            lambda: logits.masked_fill(mask, float("-inf")).log_softmax(-1), rows=ROWS, vocab=VOCAB)


def test_masked_cross_entropy_forward_backward(compare):
    logits = torch.randn(ROWS, VOCAB, requires_grad=True)
    target = torch.randint(0, VOCAB - 1, (ROWS,))
    mask = torch.zeros(VOCAB, dtype=torch.bool)
    mask[VOCAB - 1] = True

    def fused():
        ops.masked_cross_entropy(logits, target, VOCAB - 1, reduction="sum").backward()

    def reference():
        torch.nn.functional.cross_entropy(logits.masked_fill(mask, float("-inf")), target, reduction="sum").backward()

    compare(fused, reference, rows=ROWS, vocab=VOCAB)


def test_choose_masked(compare):
    x = torch.randint(0, 100, (64, 1024))
    x[torch.rand(64, 1024) < 0.5] = 100
    compare(lambda: ops.choose_masked(x, 100, 1, seed=0),
            lambda: torch.where(x == 100, torch.rand(x.shape), 2.0).argmin(-1), batch=64, length=1024)
