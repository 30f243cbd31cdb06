"""The `t2` command line. Each verb is a plain function in a module of this package; heavy imports happen inside
the verb, so `t2 -h` is instant."""

from __future__ import annotations

import argparse
import os
import sys

# OpenMP threads that busy-wait make torch several times slower whenever another process competes for the cores
# (measured: a forward pass 11.5 s instead of 2.3 s beside one other torch process on 2 cores). Sleeping threads
# cost a wake-up per parallel region instead. Must be set before torch is first imported; a value you set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import adapt, core, serve, train

VERB_MODULES = [core, train, adapt, serve]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t2", description="Transformer²: self-adaptive LLMs with SVF experts (CPU first).")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for module in VERB_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..errors import T2Error

    try:
        return args.func(args) or 0
    except (T2Error, ValueError, FileNotFoundError) as e:
        print(f"t2 {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"t2 {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
