"""Run configurations as dataclasses whose fields are also command-line options."""
from __future__ import annotations

import argparse
from dataclasses import field, fields
from typing import Any, Iterable, Optional, TypeVar

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
    """Raises ValueError naming the first field of ``config`` outside its ``choices``, or else
    the first rule (field name, whether it holds, what the field must be) that fails."""
    for f in fields(config):
        choices = f.metadata.get("choices")
        if choices is not None and getattr(config, f.name) not in choices:
            raise ValueError(f"{f.name} must be one of {choices}, got {getattr(config, f.name)!r}")
    for name, valid, rule in rules:
        if not valid:
            raise ValueError(f"{name} must be {rule}, got {getattr(config, name)!r}")


def from_options(config_type: type[Config], args: argparse.Namespace) -> Config:
    """The configuration the parsed options describe (lists back to tuples)."""
    values = {f.name: getattr(args, f.name) for f in fields(config_type)}
    return config_type(**{name: tuple(value) if isinstance(value, list) else value
                          for name, value in values.items()})
