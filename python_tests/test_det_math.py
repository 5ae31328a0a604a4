"""Accuracy of the kernels' own exp/log (csrc/det_math.h), observed through the ops they feed.

The float32 exponential sets the masked log-softmax normaliser; the float64 exponential sets
the cross-entropy gradient of float64 logits.
"""
import torch

from mdm_ext import ops


def test_masked_log_softmax_normaliser_is_float32_accurate():
    # Two-token rows [0, -d]: log p_0 = -log(1 + e^-d), which exercises exp over [-87, 0].
    d = torch.linspace(0, 87, 20001, dtype=torch.float32)
    logits = torch.stack([torch.zeros_like(d), -d], -1)
    mask_col = torch.full_like(d, -5.0)[:, None]  # the excluded column must not count
    got = ops.masked_log_softmax(torch.cat([logits, mask_col], -1), 2)[:, 0].double()
    want = -torch.log1p(torch.exp(-d.double()))
    # 4 float32 ulps of the normaliser's log, relative to log values near 0.
    assert (got - want).abs().max() < 4 * 2.0**-24


def test_float64_exp_in_cross_entropy_backward():
    x = torch.randn(4096, 7, dtype=torch.float64) * 20
    target = torch.randint(0, 6, (4096,))
    x.requires_grad_(True)
    ops.masked_cross_entropy(x, target, 6, reduction="sum").backward()
    want = torch.softmax(x.detach()[:, :6], -1) - torch.nn.functional.one_hot(target, 6)
    torch.testing.assert_close(x.grad[:, :6], want, rtol=1e-12, atol=1e-14)
    assert (x.grad[:, 6] == 0).all()

