"""The `t2` command line. Each verb is a plain function in a module of this package; heavy imports happen inside
the verb, so `t2 -h` is instant."""

from __future__ import annotations

import argparse
import os
import sys

from . import adapt, chat, core, discover, serve, train  # the package's __init__ has set OMP_WAIT_POLICY before any torch import

VERB_MODULES = [core, train, adapt, serve, chat, discover]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t2", description="Transformer²: self-adaptive LLMs with SVF experts (CPU first).")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for module in VERB_MODULES:
        module.register(sub)
    parser.verb_parsers = sub.choices  # {verb: its parser}, for errors reported in the verb's own words
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the verb's usage and name, not the top level's ("t2: error: unrecognized arguments")
        parser.verb_parsers[args.verb].error(f"unrecognized arguments: {' '.join(unknown)}")
    from ..errors import T2Error

    if os.environ.get("WORLD_SIZE", "1") != "1":  # launched by torchrun: share the work, or refuse to race
        from ..training.distributed import DISTRIBUTED_VERBS, init_from_env

        if args.verb not in DISTRIBUTED_VERBS:
            print(f"t2 {args.verb}: error: does not run under torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}); "
                  f"run it as one process (only {', '.join(DISTRIBUTED_VERBS)} run distributed)", file=sys.stderr)
            return 2
        init_from_env()
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
