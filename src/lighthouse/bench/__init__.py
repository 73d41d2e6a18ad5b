"""Benchmarks: `python -m lighthouse.bench attention | profile | scorers | train | hf | cp`.

    attention.py  one attention layer: dense SDPA vs reference vs fast path vs the floor (and `profile`)
    scorers.py    the cost of the norm, dilated and gla scorers
    train.py      tokens/s of whole training steps of a config's model, dense vs Lighthouse, one GPU
    hf.py         a Hugging Face Llama trained with attn_implementation "sdpa" vs "lighthouse"
    cp.py         context-parallel training steps under torchrun: s/step and peak memory per GPU
    timing.py     what they share: one timer, one peak-memory measurement, one result writer

Each module adds its subcommand (`add_parser`) and runs it (`main(args, argv)`); `main` here
parses the command line and dispatches.
"""

from __future__ import annotations

import argparse

from ..cuda_allocator import prefer_expandable_segments
from . import attention, cp, hf, scorers, train

COMMANDS = {"attention": attention, "profile": attention, "scorers": scorers, "train": train, "hf": hf, "cp": cp}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lighthouse.bench", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    for module in (attention, scorers, train, hf, cp):
        module.add_parser(sub)
    args = ap.parse_args(argv)
    prefer_expandable_segments()  # before the first CUDA allocation (see lighthouse/cuda_allocator.py)
    return COMMANDS[args.what].main(args, argv)
