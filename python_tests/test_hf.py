"""Hugging Face models passed as they are, text in and text out, and ``mdm-ext generate``: tiny
random configurations and a tokenizer built here (nothing is downloaded)."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from mdm_ext import cli, hf, sample  # noqa: E402
from mdm_ext.denoiser import Denoiser  # noqa: E402

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[EOS]"] + list("abcdefghijklmnopqrstuvwxyz") + [
    "hello", "world", "the", "cat", "sat", "on", "mat", "##s", ",", "."]
VOCAB = len(WORDS)
SIZES = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             initializer_range=0.5)  # large weights: logits that depend on their inputs visibly
MODELS = {
    "bert": lambda: transformers.BertForMaskedLM(transformers.BertConfig(**SIZES, max_position_embeddings=64)),
    "roberta": lambda: transformers.RobertaForMaskedLM(transformers.RobertaConfig(
        **SIZES, max_position_embeddings=70, pad_token_id=0, bos_token_id=2, eos_token_id=5)),
    "modernbert": lambda: transformers.ModernBertForMaskedLM(transformers.ModernBertConfig(
        **SIZES, max_position_embeddings=64, pad_token_id=0, bos_token_id=2, eos_token_id=5, sep_token_id=3,
        cls_token_id=2, global_attn_every_n_layers=1, local_attention=16)),
}


def tokenizer(chat: bool = False):
    tok = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})
    tok.add_special_tokens({"eos_token": "[EOS]"})
    if chat:
        tok.chat_template = "{% for m in messages %}[CLS] {{ m['content'] }} [SEP]{% endfor %}"
    return tok


def model(name: str):
    torch.manual_seed(0)
    return MODELS[name]().eval()


@pytest.mark.parametrize("name", MODELS)
def test_a_transformers_model_samples_as_it_is(name):
    network = model(name)
    tok = tokenizer()
    result = sample.first_hitting(network, batch_size=2, length=8, mask_id=tok.mask_token_id, seed=0,
                                  tokens_per_step=2)
    assert result.tokens.shape == (2, 8) and result.nfe == 4 and (result.tokens != tok.mask_token_id).all()
    assert Denoiser(network).num_ids == VOCAB and not Denoiser(network).accepts_positions
    confidence = sample.confidence(network, batch_size=2, length=8, mask_id=tok.mask_token_id, steps=4, seed=0)
    assert (confidence.tokens != tok.mask_token_id).all()


def test_positions_are_never_declared_for_a_transformers_model():
    with pytest.raises(ValueError, match="accepts_positions"):
        Denoiser(model("bert"), accepts_positions=True)


def test_a_model_in_training_mode_is_named():
    network = MODELS["bert"]()
    assert network.training
    with pytest.warns(UserWarning, match="training mode"):
        sample.first_hitting(network, batch_size=1, length=4, mask_id=4, seed=0)


@pytest.mark.parametrize("name", MODELS)
def test_the_attention_mask_travels_with_left_padded_prompts(name):
    """Each row of a left-padded batch gets the logits it gets alone with its own attention
    mask (the mask's rows follow it through the row subsets of every call); another row's mask
    would change them."""
    network, tok = model(name), tokenizer()
    prompts = ["hello world", "the cat sat on the mat", "a"]
    ids, attention = hf.encode(tok, prompts, mask_id=tok.mask_token_id)
    assert bool((attention[:, -1] == 1).all()) and bool((attention[:, 0] == 0).any())  # left padded
    calls = []

    def recorded(x, attention_mask):
        logits = network(x, attention_mask=attention_mask).logits
        calls.append((x, attention_mask, logits))
        return logits

    texts = hf.generate(recorded, tok, prompts, max_new_tokens=6, sampler="confidence", steps=3, seed=1,
                        temperature=0.0)
    assert len(texts) == 3
    own_rows = 0
    for x, mask, logits in calls:
        for row in range(x.shape[0]):
            alone = network(x[row:row + 1], attention_mask=mask[row:row + 1]).logits[0]
            torch.testing.assert_close(logits[row], alone, rtol=1e-4, atol=1e-4)
            own_rows += 1
        assert mask.shape == x.shape and bool((mask[:, ids.shape[1]:] == 1).all())
    wrong = network(calls[0][0][:1], attention_mask=calls[0][1][1:2]).logits[0]
    assert not torch.allclose(wrong, calls[0][2][0], atol=1e-3)  # the check has power
    assert own_rows > len(calls)


def test_generate_text_in_text_out_with_chat_template_and_eos():
    network, tok = model("bert"), tokenizer(chat=True)
    seen = {}

    def spy(x, attention_mask):
        seen.setdefault("x", x)
        return network(x, attention_mask=attention_mask)

    texts = hf.generate(spy, tok, ["hello", "the cat"], max_new_tokens=5, seed=0)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    first = seen["x"]
    assert first[1, :first.shape[1] - 5].tolist()[-4:] == tok("[CLS] the cat [SEP]", add_special_tokens=False)[
        "input_ids"]  # the template wrapped the prompt
    eos = tok.eos_token_id
    logits_bias = torch.zeros(VOCAB)
    logits_bias[eos] = 20.0  # EOS nearly certain: the text stops at once

    def eager(x, attention_mask):
        return network(x, attention_mask=attention_mask).logits + logits_bias
    assert hf.generate(eager, tok, ["hello"], max_new_tokens=5, seed=0) == [""]


def test_special_tokens_are_excluded_by_default():
    network, tok = model("bert"), tokenizer()
    specials = set(tok.all_special_ids) - {tok.eos_token_id}
    bias = torch.zeros(VOCAB)
    bias[sorted(specials)] = 30.0  # the model loves special tokens

    def biased(x, attention_mask):
        return network(x, attention_mask=attention_mask).logits + bias
    result = {}
    hf.generate(biased, tok, ["hello world"] * 4, max_new_tokens=8, seed=0,
                callback=lambda step, tokens: result.update(tokens=tokens))
    generated = result["tokens"][:, -8:]
    assert not bool(torch.isin(generated, torch.tensor(sorted(specials))).any())


def test_a_batch_encoding_right_padded_is_laid_out_left():
    tok = tokenizer()
    encoding = tok(["hello", "the cat sat"], padding=True, padding_side="right", return_tensors="pt")
    ids, attention = hf.encode(tok, encoding, mask_id=tok.mask_token_id)
    left, _ = hf.encode(tok, tok(["hello", "the cat sat"], padding=True, padding_side="left", return_tensors="pt"),
                        mask_id=tok.mask_token_id)
    assert torch.equal(ids, left) and bool((attention[:, -1] == 1).all())


def test_bad_hf_input_is_named():
    network, tok = model("bert"), tokenizer()
    with pytest.raises(ValueError, match="sampler"):
        hf.generate(network, tok, ["a"], max_new_tokens=2, sampler="beam")
    with pytest.raises(ValueError, match="max_new_tokens"):
        hf.generate(network, tok, ["a"], max_new_tokens=0)
    with pytest.raises(TypeError, match="prompts"):
        hf.generate(network, tok, [3], max_new_tokens=2)
    with pytest.raises(ValueError, match="mask token"):
        hf.encode(tok, {"input_ids": torch.tensor([[6, 4]])}, mask_id=4)


def test_mdm_ext_generate_loads_a_local_checkpoint_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model("bert").save_pretrained(tmp_path)
    tokenizer(chat=True).save_pretrained(tmp_path)
    cli.main(["generate", "--model", str(tmp_path), "--prompt", "hello world", "--prompt", "the cat",
              "--max-new-tokens", "6", "--sampler", "confidence", "--steps", "3", "--temperature", "0.5",
              "--top-k", "5", "--device", "cpu"])
    out = capsys.readouterr().out
    assert out.count("### ") == 2 and "### hello world" in out
