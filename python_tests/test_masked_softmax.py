"""masked_log_softmax and masked_cross_entropy against their references: values and gradients
for every dtype, shapes from V = 1 to 50257, strided and broadcast inputs."""
import math

import pytest
import torch
from torch import Tensor

from conftest import random_logits, seeded
from mdm_ext import ops, reference

# [..., V]: V = 1 and 2, one row and many, a batch of several dims, a GPT-2 vocabulary.
SHAPES = [(1, 1), (4, 2), (1, 7), (300, 7), (2, 3, 50), (3, 50257)]
GRAD_SHAPES = [shape for shape in SHAPES if shape[-1] > 1]
MASK_AT = {"first": 0, "middle": 0.5, "last": 1}  # mask_id as a fraction of V - 1

# Agreement with the reference, relative to the result's scale: the kernels round once to the
# output dtype, and float32 sums over 50257 terms add ~1e-5 (accuracy is tested elsewhere).
TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 2**-10, torch.bfloat16: 2**-7}


def assert_matches(actual: Tensor, expected: Tensor, scale: float = 1.0) -> None:
    """Equal up to TOLERANCE[actual.dtype], relative to each value and to `scale`; infinities
    and NaNs must match exactly."""
    tolerance = TOLERANCE[actual.dtype]
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(
        actual.double(), expected.double(), rtol=tolerance, atol=tolerance * scale, equal_nan=True
    )


def mask_id_of(vocab: int, mask_at: str) -> int:
    return round(MASK_AT[mask_at] * (vocab - 1))


def random_targets(
    shape: tuple[int, ...], vocab: int, mask_id: int, ignore_index: int, device: str
) -> Tensor:
    """Token ids != mask_id, a fifth of them replaced by ignore_index (all of them for V = 1,
    where the mask is the only token)."""
    generator = seeded(1)
    target = torch.randint(0, max(vocab - 1, 1), shape, generator=generator)
    target += (target >= mask_id).long()  # skip the mask id
    ignored = (torch.rand(shape, generator=generator) < 0.2) | (vocab == 1)
    return target.masked_fill(ignored, ignore_index).to(device)


def grad_of(loss_fn, logits: Tensor, grad_out: Tensor) -> Tensor:
    """d (loss_fn(logits) . grad_out) / d logits."""
    leaf = logits.detach().requires_grad_()
    loss_fn(leaf).backward(grad_out)
    return leaf.grad


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("mask_at", list(MASK_AT))
def test_masked_log_softmax_values(shape, mask_at, dtype, device):
    logits = random_logits(shape, dtype, device)
    mask_id = mask_id_of(shape[-1], mask_at)
    assert_matches(ops.masked_log_softmax(logits, mask_id), reference.masked_log_softmax_ref(logits, mask_id))


@pytest.mark.parametrize("shape", GRAD_SHAPES, ids=str)
@pytest.mark.parametrize("mask_at", list(MASK_AT))
def test_masked_log_softmax_gradient(shape, mask_at, dtype, device):
    logits = random_logits(shape, dtype, device)
    grad_out = random_logits(shape, dtype, device, seed=2)
    mask_id = mask_id_of(shape[-1], mask_at)
    actual = grad_of(lambda x: ops.masked_log_softmax(x, mask_id), logits, grad_out)
    expected = grad_of(lambda x: reference.masked_log_softmax_ref(x, mask_id), logits, grad_out)
    # Gradient terms reach softmax * sum(grad_out).
    assert_matches(actual, expected, scale=1 + float(grad_out.double().sum(-1).abs().max()))
    assert not bool(actual[..., mask_id].any())


def test_masked_log_softmax_of_the_mask_alone(device):
    """V = 1: nothing is left to normalise; the output is -inf and carries no gradient."""
    logits = random_logits((3, 1), torch.float32, device).requires_grad_()
    out = ops.masked_log_softmax(logits, 0)
    assert bool((out == -math.inf).all())
    out.backward(torch.ones_like(out))
    assert not bool(logits.grad.any())


def test_masked_log_softmax_propagates_nan(device):
    logits = random_logits((2, 5), torch.float32, device)
    logits[1, 3] = math.nan
    out = ops.masked_log_softmax(logits, 0)
    assert bool(out[1, 1:].isnan().all()) and not bool(out[0].isnan().any())


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("mask_at", list(MASK_AT))
@pytest.mark.parametrize("ignore_index", [-100, 1])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_masked_cross_entropy_values_and_gradient(shape, mask_at, ignore_index, weighted, dtype, device):
    vocab = shape[-1]
    mask_id = mask_id_of(vocab, mask_at)
    logits = random_logits(shape, dtype, device)
    target = random_targets(shape[:-1], vocab, mask_id, ignore_index, device)
    weight = torch.rand(shape[:-1], generator=seeded(3)).to(device) if weighted else None
    options = {"weight": weight, "ignore_index": ignore_index}

    def loss_fn(x: Tensor) -> Tensor:
        return ops.masked_cross_entropy(x, target, mask_id, **options)

    def reference_fn(x: Tensor) -> Tensor:
        return reference.masked_cross_entropy_ref(x, target, mask_id, **options)

    expected = reference_fn(logits)
    assert_matches(loss_fn(logits), expected)
    if vocab == 1:
        return
    grad_loss = torch.randn(shape[:-1], generator=seeded(4), dtype=expected.dtype).to(device)
    actual_grad = grad_of(loss_fn, logits, grad_loss)
    expected_grad = grad_of(reference_fn, logits, grad_loss)
    assert_matches(actual_grad, expected_grad, scale=1 + float(grad_loss.abs().max()))
    ignored = target == ignore_index
    assert not bool(actual_grad[ignored].any()) and not bool(actual_grad[..., mask_id].any())


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_masked_cross_entropy_reductions(reduction, dtype, device):
    shape, mask_id, ignore_index = (6, 7, 50), 3, -100
    logits = random_logits(shape, dtype, device)
    target = random_targets(shape[:-1], shape[-1], mask_id, ignore_index, device)
    weight = torch.rand(shape[1:-1], generator=seeded(5)).to(device)  # broadcast over rows

    def loss_fn(x: Tensor) -> Tensor:
        return ops.masked_cross_entropy(x, target, mask_id, weight=weight, reduction=reduction)

    def reference_fn(x: Tensor) -> Tensor:
        total = reference.masked_cross_entropy_ref(x, target, mask_id, weight=weight).sum()
        return total if reduction == "sum" else total / (target != ignore_index).sum()

    assert_matches(loss_fn(logits), reference_fn(logits))
    grad = torch.tensor(1.0, dtype=reference_fn(logits).dtype, device=device)
    assert_matches(grad_of(loss_fn, logits, grad), grad_of(reference_fn, logits, grad))


def test_results_do_not_depend_on_layout(relayout, dtype, device):
    logits = random_logits((64, 300), dtype, device)
    target = random_targets((64,), 300, 7, -100, device)
    grad_out = random_logits((64, 300), dtype, device, seed=6)
    grad_loss = grad_out[:, 0].to(ops.masked_cross_entropy(logits, target, 7).dtype)
    for loss_fn, grad in ((lambda x: ops.masked_log_softmax(x, 7), grad_out),
                          (lambda x: ops.masked_cross_entropy(x, target, 7), grad_loss)):
        assert torch.equal(loss_fn(relayout(logits)), loss_fn(logits))
        assert torch.equal(grad_of(loss_fn, relayout(logits), grad), grad_of(loss_fn, logits, grad))


def test_broadcast_rows(dtype, device):
    """Expanded rows give the materialised rows' results, and their gradients add up."""
    row = random_logits((1, 50), dtype, device)
    target = random_targets((40,), 50, 7, -100, device)
    loss = ops.masked_cross_entropy(row.expand(40, 50), target, 7)
    assert torch.equal(loss, ops.masked_cross_entropy(row.expand(40, 50).contiguous(), target, 7))
    assert torch.equal(ops.masked_log_softmax(row.expand(40, 50), 7),
                       ops.masked_log_softmax(row.expand(40, 50).contiguous(), 7))
    ones = torch.ones_like(loss)
    actual = grad_of(lambda x: ops.masked_cross_entropy(x.expand(40, 50), target, 7), row, ones)
    expected = grad_of(lambda x: reference.masked_cross_entropy_ref(x.expand(40, 50), target, 7), row, ones)
    assert_matches(actual, expected, scale=40)


@pytest.mark.parametrize("quantity", ["values", "gradient"])
@pytest.mark.parametrize("op", ["log_softmax", "cross_entropy"])
def test_float32_error_at_most_twice_torchs(op, quantity):
    """Float32 results against float64 at V = 50257 on the CPU: the error is at most twice that of
    torch's float32 log_softmax (the reference in float32). A sequential float32 sum over the row
    made it 2.4 to 4.5 times torch's here."""
    vocab, mask_id = 50257, 25128
    logits = random_logits((16, vocab), torch.float32, seed=7)
    if op == "log_softmax":
        grad = random_logits((16, vocab), seed=8)

        def kernel(x: Tensor) -> Tensor:
            return ops.masked_log_softmax(x, mask_id)

        def torch_fn(x: Tensor) -> Tensor:
            return reference.masked_log_softmax_ref(x, mask_id)
    else:
        grad = torch.randn(16, generator=seeded(8))
        target = random_targets((16,), vocab, mask_id, -100, "cpu")

        def kernel(x: Tensor) -> Tensor:
            return ops.masked_cross_entropy(x, target, mask_id)

        def torch_fn(x: Tensor) -> Tensor:
            return reference.masked_cross_entropy_ref(x, target, mask_id)

    def result(fn, x: Tensor) -> Tensor:
        return fn(x) if quantity == "values" else grad_of(fn, x, grad.to(x.dtype))

    exact = result(torch_fn, logits.double())
    finite = exact.isfinite()

    def error(fn) -> float:
        actual = result(fn, logits).double()
        assert torch.equal(actual[~finite], exact[~finite])
        return float((actual[finite] - exact[finite]).abs().max())

    assert error(kernel) <= 2 * error(torch_fn) + 1e-9


def test_cpu_and_cuda_agree(dtype, cuda):
    """CUDA matches the CPU within the reference tolerance (its reductions run in another order)."""
    logits = random_logits((16, 50257), dtype, "cpu")
    target = random_targets((16,), 50257, 3, -100, "cpu")
    on_cuda = ops.masked_cross_entropy(logits.to(cuda), target.to(cuda), 3).cpu()
    assert_matches(on_cuda, ops.masked_cross_entropy(logits, target, 3))
    assert_matches(ops.masked_log_softmax(logits.to(cuda), 3).cpu(), ops.masked_log_softmax(logits, 3))
