"""Tiny offline models for the tests, nothing downloaded: a random GPT-2 evaluator, a word-level
tokenizer built here, and a random DiT written in MDLM's Hugging Face layout."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mdm_ext import dit

WORDS = [f"w{i}" for i in range(10)]
EOS, BOS, UNK = "<eos>", "<bos>", "<unk>"


def word_tokenizer(extra_words: int = 0) -> Any:
    """A fast tokenizer splitting on whitespace: <eos> = 0, <bos> = 1, w0.. = 2.., <unk> last."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = WORDS + [f"x{i}" for i in range(extra_words)]
    vocab = {EOS: 0, BOS: 1, **{word: i + 2 for i, word in enumerate(words)}, UNK: len(words) + 2}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=BOS, unk_token=UNK)


def tiny_gpt2(vocab_size: int, n_positions: int, seed: int = 0) -> Any:
    """A random 2-layer GPT-2 in eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=16, n_layer=2, n_head=2,
                        bos_token_id=1, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def save_evaluator(folder: Path, n_positions: int = 64, extra_words: int = 0) -> Path:
    """The tiny evaluator and its tokenizer written with save_pretrained into ``folder``."""
    tokenizer = word_tokenizer(extra_words)
    tiny_gpt2(len(tokenizer), n_positions).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def random_dit(**overrides: Any) -> dit.DiT:
    """A small DiT with every weight random (MDLM's initialisation zeroes the adaLN maps)."""
    torch.manual_seed(0)
    config = dit.DiTConfig(**{**dict(vocab_size=23, hidden_size=32, cond_dim=16, n_blocks=2, n_heads=4, length=16),
                              **overrides})
    model = dit.DiT(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.3)
    return model


def save_hf(model: dit.DiT, folder: Path) -> Path:
    """The layout of kuleshov-group/mdlm-owt: config.json and model.safetensors of backbone.*."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(dit.config_dict(model)))
    save_file({f"backbone.{k}": v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    return folder
