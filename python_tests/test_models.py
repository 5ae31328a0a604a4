import inspect

import pytest
import torch

from mdm_ext.models import PRESETS, Transformer, TransformerConfig

VOCAB = 37
LENGTH = 12


def tiny_model(causal: bool, **overrides) -> Transformer:
    torch.manual_seed(0)
    config = TransformerConfig.preset("tiny", vocab_size=VOCAB, max_len=16, causal=causal,
                                      **overrides)
    return Transformer(config).eval()


def random_tokens(batch_size: int = 3) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch_size, LENGTH), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("causal", [False, True])
def test_output_shapes(causal):
    model = tiny_model(causal)
    x = random_tokens()
    assert model(x).shape == (3, LENGTH, VOCAB)
    assert model.features(x).shape == (3, LENGTH, 64)
    assert model.head(torch.zeros(5, 64)).shape == (5, VOCAB)


@pytest.mark.parametrize("causal", [False, True])
def test_positions_match_full_forward(causal):
    model = tiny_model(causal)
    x = random_tokens()
    positions = torch.tensor([[0, 5, 11, 5], [3, 2, 1, 0], [11, 11, 7, 4]])
    full = model(x)
    expected = torch.stack([full[b, positions[b]] for b in range(3)])
    assert model.accepts_positions
    torch.testing.assert_close(model(x, positions), expected)


def test_causal_logits_ignore_future_tokens():
    model = tiny_model(causal=True)
    x = random_tokens()
    perturbed = x.clone()
    perturbed[:, 7:] = (x[:, 7:] + 1) % VOCAB
    torch.testing.assert_close(model(perturbed)[:, :7], model(x)[:, :7])
    assert not torch.allclose(model(perturbed)[:, 7:], model(x)[:, 7:])


def test_bidirectional_logits_see_future_tokens():
    model = tiny_model(causal=False)
    x = random_tokens()
    perturbed = x.clone()
    perturbed[:, -1] = (x[:, -1] + 1) % VOCAB
    assert not torch.allclose(model(perturbed)[:, 0], model(x)[:, 0])


def test_no_time_input():
    assert list(inspect.signature(Transformer.forward).parameters) == ["self", "x", "positions"]


def test_small_preset_parameter_count():
    with torch.device("meta"):
        model = Transformer(TransformerConfig.preset("small", vocab_size=50258))
    d, v, n_layer = 768, 50258, 12
    per_block = (3 * d * d + 3 * d) + (d * d + d) + (8 * d * d + 5 * d) + 4 * d
    assert model.num_parameters() == 2 * v * d + n_layer * per_block + 2 * d
    assert 160e6 < model.num_parameters() < 170e6


def test_tied_embeddings_share_weight():
    tied, untied = tiny_model(False, tie_embeddings=True), tiny_model(False)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.num_parameters() - tied.num_parameters() == VOCAB * 64


def test_gradient_reaches_every_parameter():
    model = tiny_model(causal=False).train()
    x = random_tokens()
    loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    before = model.lm_head.weight.detach().clone()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(before, model.lm_head.weight)


def test_state_dict_round_trip(tmp_path):
    model = tiny_model(causal=False)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    restored = Transformer(model.config)
    restored.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    x = random_tokens()
    torch.testing.assert_close(restored.eval()(x), model(x), rtol=0, atol=0)


def test_invalid_inputs_raise():
    model = tiny_model(causal=False)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="positions"):
        model(random_tokens(), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="n_head"):
        TransformerConfig(vocab_size=VOCAB, max_len=8, n_layer=1, n_head=3, n_embd=64)
    with pytest.raises(ValueError, match="name"):
        TransformerConfig.preset("huge", vocab_size=VOCAB)
    assert "tiny" in PRESETS
