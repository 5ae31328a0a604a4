"""MDLM's DiT: the released checkpoint's parameter names and shapes load into it, its two file
formats round-trip, it samples as a denoiser and through ``mdm-ext sample --checkpoint``."""
import math
import pathlib
import pickle

import pytest
import torch

from mdm_ext import cli, dit, sample
from offline_models import random_dit, save_hf
from mdm_ext.dit import DiT, DiTConfig, load_mdlm

# kuleshov-group/mdlm-owt as published: config.json {"vocab_size": 50258, "model_length": 1024,
# "hidden_dim": 768, "cond_dim": 128, "n_blocks": 12, "n_heads": 12, "dropout": 0.1,
# "time_conditioning": false}; its weights are the "backbone." entries below (those of
# MDLM's Lightning checkpoints too, whose moving average lists the same tensors in this order).
VOCAB, HIDDEN, COND, BLOCKS, HEAD = 50258, 768, 128, 12, 64
OWT_CONFIG = {"model_type": "mdlm", "vocab_size": VOCAB, "model_length": 1024, "hidden_dim": HIDDEN,
              "cond_dim": COND, "n_blocks": BLOCKS, "n_heads": 12, "dropout": 0.1, "time_conditioning": False}
BEFORE_BLOCKS = [("vocab_embed.embedding", (VOCAB, HIDDEN)), ("sigma_map.mlp.0.weight", (COND, 256)),
                 ("sigma_map.mlp.0.bias", (COND,)), ("sigma_map.mlp.2.weight", (COND, COND)),
                 ("sigma_map.mlp.2.bias", (COND,))]
BLOCK = [("norm1.weight", (HIDDEN,)), ("attn_qkv.weight", (3 * HIDDEN, HIDDEN)),
         ("attn_out.weight", (HIDDEN, HIDDEN)), ("norm2.weight", (HIDDEN,)),
         ("mlp.0.weight", (4 * HIDDEN, HIDDEN)), ("mlp.0.bias", (4 * HIDDEN,)),
         ("mlp.2.weight", (HIDDEN, 4 * HIDDEN)), ("mlp.2.bias", (HIDDEN,)),
         ("adaLN_modulation.weight", (6 * HIDDEN, COND)), ("adaLN_modulation.bias", (6 * HIDDEN,))]
AFTER_BLOCKS = [("output_layer.norm_final.weight", (HIDDEN,)), ("output_layer.linear.weight", (VOCAB, HIDDEN)),
                ("output_layer.linear.bias", (VOCAB,)), ("output_layer.adaLN_modulation.weight", (2 * HIDDEN, COND)),
                ("output_layer.adaLN_modulation.bias", (2 * HIDDEN,))]
OWT_PARAMETERS = BEFORE_BLOCKS + [(f"blocks.{i}.{name}", shape) for i in range(BLOCKS) for name, shape in BLOCK] \
    + AFTER_BLOCKS
INV_FREQ = ("rotary_emb.inv_freq", (HEAD // 2,))  # a buffer, saved beside the parameters


def test_the_released_checkpoints_names_and_shapes_load():
    assert sum(math.prod(shape) for _, shape in OWT_PARAMETERS) == 169_627_218  # MDLM reports 170M
    meta = {f"backbone.{name}": torch.empty(shape, device="meta") for name, shape in OWT_PARAMETERS + [INV_FREQ]}
    weights = dit._backbone(meta, "hf")
    config = dit._config_from(weights, {dit._HF_CONFIG_KEYS[key]: value for key, value in OWT_CONFIG.items()
                                        if key in dit._HF_CONFIG_KEYS})
    assert config == DiTConfig()  # the defaults are the released model
    with torch.device("meta"):
        model = DiT(config)
    assert [(name, tuple(p.shape)) for name, p in model.named_parameters()] == OWT_PARAMETERS
    model.load_state_dict(weights, strict=True, assign=True)
    assert dit.config_dict(model) == OWT_CONFIG


class ConfigNode:
    """Pickles as omegaconf's containers do: items under _content, values under _val."""

    def __init__(self, state):
        self.__dict__.update(state)


def omegaconf_like(value):
    if isinstance(value, dict):
        return ConfigNode({"_content": {k: omegaconf_like(v) for k, v in value.items()}, "_metadata": None})
    return ConfigNode({"_val": value, "_metadata": None})


def save_lightning(model: DiT, path: pathlib.Path, average: DiT, tripwire: pathlib.Path) -> pathlib.Path:
    """MDLM's Lightning layout: state_dict of backbone.*, the moving average as a list, and the
    run's configuration and tokenizer pickled as objects (one of which would touch ``tripwire``
    if anything of the file ran)."""
    config = {"model": {"n_heads": model.config.n_heads, "length": model.config.length, "dropout": 0.1},
              "time_conditioning": model.config.time_conditioning}
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in model.state_dict().items()},
                "ema": {"decay": 0.9999, "num_updates": 7, "shadow_params": [p.detach() for p in average.parameters()]},
                "hyper_parameters": {"config": omegaconf_like(config), "tokenizer": Tripwire(tripwire)},
                "epoch": 3}, path)
    return path


class Tripwire:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


@pytest.mark.parametrize("time_conditioning", [False, True])
def test_round_trips_in_both_formats(tmp_path, time_conditioning):
    model, average = random_dit(time_conditioning=time_conditioning), random_dit(n_heads=4)
    with torch.no_grad():  # an average that differs from the weights
        for p in average.parameters():
            p.mul_(0.5)
    x = torch.randint(0, 23, (3, 16), generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.9, 0.5, 0.1])
    hf = load_mdlm(save_hf(model, tmp_path / "hf"))
    assert hf.config == model.config and not hf.training
    torch.testing.assert_close(hf(x, t), model(x, t), rtol=0, atol=0)
    ckpt = save_lightning(model, tmp_path / "mdlm.ckpt", average, tmp_path / "ran")
    raw, averaged = load_mdlm(ckpt, ema=False), load_mdlm(ckpt)
    assert not (tmp_path / "ran").exists(), "loading ran code of the checkpoint"
    assert raw.config == model.config  # n_heads, length, time conditioning read from its configuration
    torch.testing.assert_close(raw(x, t), model(x, t), rtol=0, atol=0)
    average.config.time_conditioning = time_conditioning
    torch.testing.assert_close(averaged(x, t), average(x, t), rtol=0, atol=0)


def test_a_foreign_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_mdlm(tmp_path / "missing.ckpt")
    torch.save({"model": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="state_dict"):
        load_mdlm(tmp_path / "other.ckpt")
    with pytest.raises(pickle.UnpicklingError):
        (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
        load_mdlm(tmp_path / "garbage.ckpt")


def test_is_the_reference_architecture_in_small():
    # hand-checkable facts of the architecture: the mask id is the last, time enters through
    # sigma = -log(1 - (1 - 1e-3) t) only when conditioned, positions select rows of the head
    model = random_dit(time_conditioning=True)
    assert (model.mask_id, model.num_ids, model.needs_time, model.accepts_positions) == (22, 23, True, True)
    x = torch.randint(0, 23, (2, 16), generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.3, 0.8])
    sigma = -torch.log1p(-(1 - 1e-3) * t)
    torch.testing.assert_close(model(x, t), model(x, sigma=sigma))
    assert not torch.allclose(model(x, t), model(x, t.flip(0)))
    positions = torch.tensor([[0, 7, 15], [3, 3, 1]])
    torch.testing.assert_close(model(x, t, positions), torch.take_along_dim(model(x, t), positions[..., None], 1))
    unconditioned = random_dit()
    torch.testing.assert_close(unconditioned(x, t), unconditioned(x))
    # bidirectional: the first position sees the last token
    changed = x.clone()
    changed[:, -1] = (x[:, -1] + 1) % 22
    assert not torch.allclose(unconditioned(changed)[:, 0], unconditioned(x)[:, 0])
    with pytest.raises(ValueError, match="x must be"):
        unconditioned(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="n_heads"):
        DiTConfig(hidden_size=30, n_heads=4)


def test_samples_as_a_denoiser_and_from_the_command_line(tmp_path):
    model = random_dit()
    result = sample.first_hitting(model, batch_size=3, length=12, mask_id=model.mask_id, seed=0)
    assert result.tokens.shape == (3, 12) and result.nfe == 12
    assert int(result.tokens.max()) < model.mask_id
    ancestral = sample.ancestral(random_dit(time_conditioning=True), batch_size=2, length=8, mask_id=22, steps=16,
                                 seed=0)
    assert int(ancestral.tokens.max()) < 22
    folder = save_hf(model, tmp_path / "hf")
    out = tmp_path / "samples.pt"
    cli.main(["sample", "--checkpoint", str(folder), "--num-samples", "3", "--length", "12", "--device", "cpu",
              "--out", str(out)])
    tokens = torch.load(out, weights_only=True)["tokens"]
    torch.testing.assert_close(tokens, sample.first_hitting(model, batch_size=3, length=12, mask_id=22,
                                                            seed=_first_batch_seed()).tokens)


def _first_batch_seed() -> int:
    from mdm_ext.generate import batch_seed

    return batch_seed(0, 0)
