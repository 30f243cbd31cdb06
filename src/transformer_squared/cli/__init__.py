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
    from ..experts import ExpertError

    if os.environ.get("WORLD_SIZE", "1") != "1":  # launched by torchrun: share the work, or refuse to race
        from ..training.distributed import DISTRIBUTED_VERBS, init_from_env

        if args.verb not in DISTRIBUTED_VERBS:
            print(f"t2 {args.verb}: error: does not run under torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}); "
                  f"run it as one process (only {', '.join(DISTRIBUTED_VERBS)} run distributed)", file=sys.stderr)
            return 2
        init_from_env()
    try:
        return args.func(args) or 0
    except (ExpertError, ValueError, FileNotFoundError) as e:
        print(f"t2 {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"t2 {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
