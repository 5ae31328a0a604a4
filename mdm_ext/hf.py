"""Hugging Face models and tokenizers: text in, text out, and ``mdm-ext generate``.

A transformers masked LM is a denoiser as it is (its ``ModelOutput.logits`` is unwrapped, its
device and embedding size read from it). This module adds what a tokenizer knows: prompts as
text (the chat template applied when the tokenizer has one) or a ``BatchEncoding``, laid out
as LLaDA does (left padding, an attention mask over the prompt and the generated positions),
EOS from the tokenizer, and its special tokens excluded from the draws but for those meant to
be generated (EOS). transformers is imported only here.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from . import checks, sample
from .denoiser import Denoiser
from .options import add_options
from .sampling.options import PYTHON_ONLY, SamplingOptions

SAMPLERS = ("first_hitting", "confidence", "ancestral")
Prompts = Union[str, Sequence[str], Mapping[str, Tensor]]
_FROM_TOKENIZER = object()  # eos_id default: the tokenizer's


def special_ids(tokenizer: Any, keep: Iterable[Optional[int]] = ()) -> list[int]:
    """The tokenizer's special token ids, but ``keep`` (those meant to be generated, EOS)."""
    return sorted(set(tokenizer.all_special_ids) - {i for i in keep if i is not None})


def encode(tokenizer: Any, prompts: Prompts, *, mask_id: int,
           chat_template: Optional[bool] = None) -> tuple[Tensor, Tensor]:
    """Prompts as (ids [B, P], attention_mask [B, P]), left padded (LLaDA's layout: every
    prompt ends at column P, where generation starts).

    prompts: a text, a list of texts (wrapped in the chat template when ``chat_template`` is
        True, or None and the tokenizer has one) or a ``BatchEncoding`` (padded either way).
    Padding positions hold the pad id (never ``mask_id``: they are not generated).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, Mapping):
        if "input_ids" not in prompts:
            raise ValueError("prompts must be texts or a BatchEncoding with input_ids")
        ids = torch.as_tensor(prompts["input_ids"])
        mask = torch.as_tensor(prompts.get("attention_mask", torch.ones_like(ids)))
        if ids.dim() != 2 or mask.shape != ids.shape:
            raise ValueError(f"prompts: input_ids and attention_mask must be [B, P], got {tuple(ids.shape)} "
                             f"and {tuple(mask.shape)}")
        rows = [row[keep.bool()] for row, keep in zip(ids, mask)]
    else:
        texts = list(prompts)
        if not texts or not all(isinstance(text, str) for text in texts):
            raise TypeError("prompts must be a text, a non-empty list of texts or a BatchEncoding")
        templated = getattr(tokenizer, "chat_template", None) is not None if chat_template is None else chat_template
        if templated:
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                   tokenize=False) for text in texts]
        rows = [torch.as_tensor(tokenizer(text, add_special_tokens=not templated)["input_ids"]) for text in texts]
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0, 1) if i is not None and i != mask_id)
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        if len(row):
            ids[r, width - len(row):] = row
            attention[r, width - len(row):] = 1
    if bool((ids[attention.bool()] == mask_id).any()):
        raise ValueError(f"prompts hold the mask token (id {mask_id}): its positions would be generated")
    return ids, attention


@torch.no_grad()
def generate(model: Callable[..., Any], tokenizer: Any, prompts: Prompts, *, max_new_tokens: int,
             sampler: Union[str, Callable[..., sample.SampleResult]] = "first_hitting",
             chat_template: Optional[bool] = None, mask_id: Optional[int] = None,
             eos_id: Any = _FROM_TOKENIZER, exclude_ids: Optional[Sequence[int]] = None,
             network_kwargs: Optional[Mapping[str, Any]] = None, **options: Any) -> list[str]:
    """Generated texts, one per prompt: ``max_new_tokens`` positions after each prompt, cut at
    the first EOS, decoded without special tokens.

    sampler: "first_hitting", "confidence", "ancestral" or a sampler function; ``options``
        are its arguments (``steps``, ``tokens_per_step``, ``block_length``, ...) and the
        :class:`~mdm_ext.sample.SamplingOptions` (``temperature``, ``seed``, ...).
    mask_id, eos_id: the tokenizer's by default (``eos_id=None``: no EOS handling).
    exclude_ids: default: the tokenizer's special tokens but EOS, and the ids the model has
        beyond the tokenizer's vocabulary.
    The attention mask (zero on padding) goes to the model with its rows, after any
    ``network_kwargs`` of the caller.
    """
    max_new_tokens = checks.integer("max_new_tokens", max_new_tokens, minimum=1)
    draw = getattr(sample, sampler) if isinstance(sampler, str) and sampler in SAMPLERS else sampler
    if not callable(draw):
        raise ValueError(f"sampler must be one of {SAMPLERS} or a sampler function, got {sampler!r}")
    mask_id = tokenizer.mask_token_id if mask_id is None else mask_id
    if mask_id is None:
        raise ValueError("mask_id: the tokenizer has no mask token; pass mask_id=")
    eos_id = tokenizer.eos_token_id if eos_id is _FROM_TOKENIZER else eos_id
    if exclude_ids is None:
        num_ids = Denoiser(model).num_ids or len(tokenizer)
        exclude_ids = special_ids(tokenizer, keep=[eos_id]) + list(range(len(tokenizer), num_ids))
    ids, attention = encode(tokenizer, prompts, mask_id=mask_id, chat_template=chat_template)
    batch, prompt_length = ids.shape
    attention = torch.cat([attention, torch.ones((batch, max_new_tokens), dtype=attention.dtype)], dim=1)
    result = draw(model, length=prompt_length + max_new_tokens, mask_id=mask_id, prefix=ids, eos_id=eos_id,
                  exclude_ids=[i for i in exclude_ids if i != mask_id],
                  network_kwargs={**(network_kwargs or {}), "attention_mask": attention}, **options)
    texts = []
    for row in result.tokens[:, prompt_length:].cpu():
        if eos_id is not None and bool((row == eos_id).any()):
            row = row[: int((row == eos_id).int().argmax())]
        texts.append(tokenizer.decode(row.tolist(), skip_special_tokens=True))
    return texts


def load(path: str, *, trust_remote_code: bool = False, dtype: str = "auto",
         device: Optional[str] = None) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) from a local directory (offline) or a Hub name:
    a masked LM, else the architecture's base class (remote-code checkpoints register theirs
    with AutoModel, as LLaDA and Dream do)."""
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    local = Path(path).is_dir()
    common = dict(trust_remote_code=trust_remote_code, local_files_only=local)
    tokenizer = AutoTokenizer.from_pretrained(path, **common)
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    try:
        model = AutoModelForMaskedLM.from_pretrained(path, dtype=torch_dtype, **common)
    except ValueError:  # no masked-LM class for this configuration
        model = AutoModel.from_pretrained(path, dtype=torch_dtype, **common)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mdm-ext generate``."""
    parser.add_argument("--model", required=True, help="a transformers checkpoint: a local directory or a Hub name")
    parser.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a batch)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--sampler", choices=SAMPLERS, default="first_hitting")
    parser.add_argument("--steps", type=int, default=None, help="confidence / ancestral steps (default: the "
                        "number of new tokens)")
    parser.add_argument("--tokens-per-step", type=int, default=1, help="first-hitting tokens per call")
    parser.add_argument("--block-length", type=int, default=None, help="confidence decoding block")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-chat-template", action="store_true", help="use the prompts as they are")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the checkpoint's own modelling code "
                        "(LLaDA, Dream)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    add_options(parser, SamplingOptions, skip=PYTHON_ONLY)


def run(args: argparse.Namespace) -> None:
    """``mdm-ext generate``: print each prompt's generated text."""
    model, tokenizer = load(args.model, trust_remote_code=args.trust_remote_code, dtype=args.dtype,
                            device=args.device)
    strategy: dict[str, Any] = {
        "first_hitting": dict(tokens_per_step=args.tokens_per_step),
        "confidence": dict(steps=args.steps or args.max_new_tokens, block_length=args.block_length),
        "ancestral": dict(steps=args.steps or args.max_new_tokens),
    }[args.sampler]
    options = {name: getattr(args, name) for name in ("temperature", "top_k", "top_p", "min_p", "min_new_tokens",
                                                      "legacy_float32")}
    if args.eos_id is not None:
        options["eos_id"] = args.eos_id
    if args.exclude_ids:
        options["exclude_ids"] = args.exclude_ids
    texts = generate(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens, sampler=args.sampler,
                     chat_template=False if args.no_chat_template else None, seed=args.seed, **strategy, **options)
    for prompt, text in zip(args.prompt, texts):
        print(f"### {prompt}\n{text}")
