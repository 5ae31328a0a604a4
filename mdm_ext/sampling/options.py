"""The options every sampler shares, in one object."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from .. import checks
from ..options import at_least, option, real_in
from .processors import TokenProcessor, check_options
from .seeds import SeedArgument


@dataclass
class SamplingOptions:
    """What a sampler does besides its strategy: token shaping, seeds, EOS, conditioning and
    reporting. Checked on creation (and by ``dataclasses.replace``); every sampler also takes
    these as keyword arguments.

    Fields with a command-line form carry their ``--help`` text (``mdm-ext sample`` and
    ``mdm-ext generate`` build their options from them).
    """

    temperature: float = option(1.0, "sampling temperature (0: the most likely token)", type=real_in(0))
    top_k: Optional[int] = option(None, "draw among the k likeliest tokens only", type=at_least(1))
    top_p: Optional[float] = option(None, "draw among the likeliest tokens holding probability p",
                                    type=real_in(0, 1, low_open=True))
    min_p: Optional[float] = option(None, "drop tokens less likely than p times the likeliest", type=real_in(0, 1))
    exclude_ids: Sequence[int] = option((), "token ids never drawn (the mask id never is)")
    eos_id: Optional[int] = option(None, "end-of-sequence id: every position after a sequence's first EOS "
                                   "becomes EOS", type=at_least(0))
    min_new_tokens: int = option(0, "no EOS at a sequence's first N generated positions", type=at_least(0))
    legacy_float32: bool = option(False, "the biased float32 recipe (study only)")
    # Python-only fields
    seed: SeedArgument = field(default=None, metadata={"help": "an int (one stream for the batch), one seed "
                               "per sequence (batch invariant), or None (from torch's default generator)"})
    processors: Sequence[TokenProcessor] = field(default=(), metadata={"help": "extra token processors, "
                                                 "applied after temperature and the filters"})
    network_kwargs: Optional[Mapping[str, Any]] = field(default=None, metadata={"help": "keyword arguments of "
                                                        "every network call; tensors with a leading batch dim "
                                                        "travel with their rows"})
    callback: Optional[Callable[[int, Tensor], None]] = field(default=None, metadata={"help": "called as "
                                                              "callback(step, tokens [B, L]) after every step"})
    return_history: bool = field(default=False, metadata={"help": "keep the tokens after each step and the "
                                                          "probability each token was drawn with"})
    progress: bool = field(default=False, metadata={"help": "a progress bar"})
    device: Optional[Union[str, torch.device]] = field(default=None, metadata={"help": "where tokens live "
                                                       "(default: the network's device, else the CPU)"})

    def __post_init__(self) -> None:
        for name, value in check_options(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                                         min_p=self.min_p).items():
            setattr(self, name, value)
        if isinstance(self.exclude_ids, (str, bytes)) or not hasattr(self.exclude_ids, "__iter__"):
            raise TypeError(f"exclude_ids must be a sequence of token ids, got {type(self.exclude_ids).__name__}")
        self.exclude_ids = tuple(checks.integer("exclude_ids entries", i, minimum=0) for i in self.exclude_ids)
        self.eos_id = None if self.eos_id is None else checks.integer("eos_id", self.eos_id, minimum=0)
        self.min_new_tokens = checks.integer("min_new_tokens", self.min_new_tokens, minimum=0)
        if self.eos_id is not None and self.eos_id in self.exclude_ids:
            raise ValueError(f"eos_id = {self.eos_id} is also in exclude_ids: it could never be drawn")
        if self.network_kwargs is not None and not isinstance(self.network_kwargs, Mapping):
            raise TypeError(f"network_kwargs must be a dict of keyword arguments, got "
                            f"{type(self.network_kwargs).__name__}")
        if self.callback is not None and not callable(self.callback):
            raise TypeError(f"callback must be callable, got {type(self.callback).__name__}")
        self.processors = tuple(self.processors)
        if not all(callable(processor) for processor in self.processors):
            raise TypeError("processors must hold callables processor(scores, sites) -> scores")
        self.legacy_float32, self.return_history, self.progress = (
            bool(self.legacy_float32), bool(self.return_history), bool(self.progress))


OPTION_NAMES = tuple(f.name for f in fields(SamplingOptions))
# the fields without a command-line form
PYTHON_ONLY = ("seed", "processors", "network_kwargs", "callback", "return_history", "progress", "device")


def resolve(options: Optional[SamplingOptions], values: Mapping[str, Any], sampler: str) -> SamplingOptions:
    """``options`` (default: all defaults) with the keyword arguments ``values`` of a sampler
    call on top; an unknown name is a TypeError naming it."""
    unknown = sorted(set(values) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(f"{sampler}() got an unexpected keyword argument {unknown[0]!r} "
                        f"(sampling options: {', '.join(OPTION_NAMES)})")
    if options is not None and not isinstance(options, SamplingOptions):
        raise TypeError(f"options must be a SamplingOptions, got {type(options).__name__}")
    return dataclasses.replace(options or SamplingOptions(), **values)


def from_arguments(args: Any, **values: Any) -> SamplingOptions:
    """The options of parsed command-line arguments (the fields with a command-line form, as
    added by ``mdm_ext.options.add_options(parser, SamplingOptions, skip=PYTHON_ONLY)``), with
    ``values`` on top."""
    given = {name: getattr(args, name) for name in OPTION_NAMES if name not in PYTHON_ONLY}
    return SamplingOptions(**{**given, **values})
