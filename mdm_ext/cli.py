"""Command line: ``mdm-ext demo | reproduce | train | sample | generate``."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> None:
    from . import generate, hf, reproduce, train

    parser = argparse.ArgumentParser(prog="mdm-ext", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="a reduced reproduction of arXiv 2409.02908: float32 against "
                               "float64 sampling, first-hitting, speed, masked against autoregressive "
                               "(minutes on a CPU)")
    reproduce.add_arguments(demo, reproduce.DEMO)
    demo.set_defaults(run=reproduce.run)
    full = commands.add_parser("reproduce", help="the full reproduction (for a GPU): vocabulary 1023, "
                               "L = 256, up to 65536 ancestral steps")
    reproduce.add_arguments(full, reproduce.FULL)
    full.set_defaults(run=reproduce.run)
    training = commands.add_parser("train", help="train a masked diffusion model or its autoregressive "
                                   "baseline (torchrun for several processes)")
    train.add_arguments(training)
    training.set_defaults(run=train.run)
    sampling = commands.add_parser("sample", help="draw samples from a checkpoint or a Markov oracle, "
                                   "sharded across torchrun ranks")
    generate.add_arguments(sampling)
    sampling.set_defaults(run=generate.run)
    text = commands.add_parser("generate", help="generate text with a Hugging Face model (a local directory "
                               "works offline): mdm-ext generate --model PATH --prompt TEXT")
    hf.add_arguments(text)
    text.set_defaults(run=hf.run)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
