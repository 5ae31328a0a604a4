"""Command line: ``mdm-ext demo | reproduce | train | sample | generate``.

Every command refuses a bad input before it starts working, with one line that names the option
(``mdm-ext train: error: --lr must be ..., got ...``, exit status 2), and checks its ``--out``
and ``--device`` first, so that no result is lost to a path that cannot be written. An error
of the machine (a full disk, an unreadable file) or a diverged training run is one line too,
exit status 1. ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import NoReturn, Optional, Sequence

from . import files, processes


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


# What each command's --out names: a folder of files, or one file (generate prints its texts).
_OUT_IS_FOLDER = {"demo": True, "reproduce": True, "train": True, "sample": False, "generate": None}


def main(argv: Optional[Sequence[str]] = None) -> None:
    from . import generate, hf, reproduce, train

    parser = _Parser(prog="mdm-ext", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="on an error, show its traceback")

    def command(name: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=description, description=description, parents=[common])

    demo = command("demo", "a reduced reproduction of arXiv 2409.02908: float32 against float64 sampling, "
                   "first-hitting, speed, masked against autoregressive (minutes on a CPU)")
    reproduce.add_arguments(demo, reproduce.DEMO)
    demo.set_defaults(run=reproduce.run)
    full = command("reproduce", "the full reproduction (for a GPU): vocabulary 1023, L = 256, up to 65536 "
                   "ancestral steps")
    reproduce.add_arguments(full, reproduce.FULL)
    full.set_defaults(run=reproduce.run)
    training = command("train", "train a masked diffusion model or its autoregressive baseline (torchrun for "
                       "several processes)")
    train.add_arguments(training)
    training.set_defaults(run=train.run)
    sampling = command("sample", "draw samples from a checkpoint or a Markov oracle, sharded across torchrun ranks")
    generate.add_arguments(sampling)
    sampling.set_defaults(run=generate.run)
    text = command("generate", "generate text with a Hugging Face model (a local directory works offline): "
                   "mdm-ext generate --model PATH --prompt TEXT")
    hf.add_arguments(text)
    text.set_defaults(run=hf.run)

    args = parser.parse_args(argv)
    subparser = commands.choices[args.command]
    try:
        _check_device_and_output(args)
        args.run(args)
    except (ValueError, OSError, FloatingPointError) as error:
        if args.debug:
            raise
        _fail(subparser, args, error)


def _check_device_and_output(args: argparse.Namespace) -> None:
    """Refuses an unusable --device or --out before any work, and removes what killed writes
    left in --out."""
    if getattr(args, "device", None) is not None:
        processes.process_device(args.device)
    folder = _OUT_IS_FOLDER[args.command]
    if folder is None:
        return
    try:
        files.check_output(args.out, folder=folder)
    except ValueError as error:
        raise ValueError(f"--out {error}") from None
    out = Path(args.out)
    if folder:
        files.remove_stale_temporaries(out)
    else:
        files.remove_stale_temporaries(out.parent, out.name)


def _fail(parser: argparse.ArgumentParser, args: argparse.Namespace, error: Exception) -> NoReturn:
    """Ends the command with one line for ``error``: exit 2 for a bad value, 1 for the rest."""
    if isinstance(error, OSError):
        reason = error.strerror or str(error)
        parser.exit(1, f"{parser.prog}: error: {f'{error.filename}: ' if error.filename else ''}{reason}\n")
    if isinstance(error, FloatingPointError):
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    flags = {action.dest: action.option_strings[0] for action in parser._actions if action.option_strings}
    message = " ".join(str(error).split())  # one line
    if isinstance(error, files.UnusableFile):
        flag = _option_holding(error.path, args, flags)
        if flag is not None:
            message = f"{flag}: {message}"
    else:
        # the package's errors start with the argument's name: the option of that name is the cause
        name = re.match(r"[a-z][a-z0-9_]*(?= )", message)
        if name is not None and name[0] in flags:
            message = flags[name[0]] + message[name.end():]
    parser.error(message)


def _option_holding(path: Path, args: argparse.Namespace, flags: dict[str, str]) -> Optional[str]:
    """The option whose value is ``path`` or a folder above it."""
    target = path.absolute()
    for dest, flag in flags.items():
        value = getattr(args, dest, None)
        if isinstance(value, str) and value and (Path(value).absolute() == target
                                                  or Path(value).absolute() in target.parents):
            return flag
    return None


if __name__ == "__main__":
    main(sys.argv[1:])
