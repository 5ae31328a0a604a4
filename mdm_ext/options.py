"""Run configurations as dataclasses whose fields are also command-line options, and the
argparse types that check an option's value as it is parsed."""
from __future__ import annotations

import argparse
import math
from dataclasses import field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, TypeVar

from . import checks

Config = TypeVar("Config")


def option(default: Any, description: str, **argparse_kwargs: Any) -> Any:
    """A dataclass field with its --help text (and argparse keywords such as ``choices``, or
    ``type`` where the default is None)."""
    return field(default=default, metadata={"help": description, **argparse_kwargs})


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, config_type: type,
                defaults: Optional[Any] = None, skip: tuple[str, ...] = ()) -> None:
    """Every field of ``config_type`` but ``skip`` as ``--field-name``, defaulting to the field's
    value in ``defaults`` (a preset instance) or else to its declared default. Booleans take
    --x/--no-x; tuples of ints take a list."""
    for f in fields(config_type):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if defaults is None else getattr(defaults, f.name)
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        description = f"{f.metadata['help']} (default: {shown})"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=description)
        elif isinstance(default, tuple):
            parser.add_argument(flag, type=int, nargs="*", default=default, help=description)
        else:
            # a field whose default is None names its type in the metadata
            parser.add_argument(flag, type=f.metadata.get("type", type(default)), default=default,
                                choices=f.metadata.get("choices"), help=description)


def check_config(config: Any, rules: Iterable[tuple[str, bool, str]]) -> None:
    """Checks every field of ``config`` against the type of its default (ints, finite real
    numbers, strings, booleans, tuples of ints; a None default admits anything) and its
    ``choices``, then the rules (field name, whether it holds, what the field must be) in order.

    Raises TypeError or ValueError naming the first field that fails, "name must be ..., got
    ...": the command line reports it under the field's option.
    """
    for f in fields(config):
        value = getattr(config, f.name)
        _check_type(f.name, value, f.default)
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ValueError(f"{f.name} must be one of {choices}, got {value!r}")
    for name, valid, rule in rules:
        if not valid:
            raise ValueError(f"{name} must be {rule}, got {getattr(config, name)!r}")


def _check_type(name: str, value: Any, default: Any) -> None:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    elif isinstance(default, int):
        checks.integer(name, value)
    elif isinstance(default, float):
        if not math.isfinite(checks.real(name, value)):
            raise ValueError(f"{name} must be a finite real number, got {value!r}")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    elif isinstance(default, tuple):
        if not isinstance(value, tuple):
            raise TypeError(f"{name} must be a tuple of ints, got {type(value).__name__}")
        for item in value:
            checks.integer(f"{name} entries", item)


def from_options(config_type: type[Config], args: argparse.Namespace) -> Config:
    """The configuration the parsed options describe (lists back to tuples)."""
    values = {f.name: getattr(args, f.name) for f in fields(config_type)}
    return config_type(**{name: tuple(value) if isinstance(value, list) else value
                          for name, value in values.items()})


# argparse types: a bad value is refused as it is parsed ("argument --x: must be ..., got ...").
def at_least(minimum: int) -> Callable[[str], int]:
    """The type of an integer option >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an int >= {minimum}, got {text!r}")
        return value

    return parse


def real_in(low: float, high: float = math.inf, *, low_open: bool = False,
            high_open: bool = False) -> Callable[[str], float]:
    """The type of a finite real option in [low, high] (ends left out where open)."""
    interval = (f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}" if high < math.inf
                else f"{'>' if low_open else '>='} {low:g}")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        inside = (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
        if not (math.isfinite(value) and inside):
            raise argparse.ArgumentTypeError(f"must be a finite number {interval}, got {text!r}")
        return value

    return parse


def existing_file(text: str) -> str:
    """The type of an option naming a file to read: it must exist and not be a folder."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a file")
    return text
