"""The `t2` command line. Each verb is a plain function in a module of this package; heavy imports happen inside
the verb, so `t2 -h` is instant. Library code reports through `logging` (loggers under "transformer_squared");
only the CLI prints, and `main` shows those records on stderr as `t2 VERB: message` lines."""

from __future__ import annotations

import argparse
import contextlib
import logging
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


class _StderrHandler(logging.StreamHandler):
    """`t2 VERB: message` lines (`t2 VERB: warning: message` above INFO) on the current sys.stderr, not the one
    there was when the handler was made."""

    def __init__(self, verb: str):
        super().__init__()
        self.prefix = f"t2 {verb}: "

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets it; the property always answers sys.stderr
        pass

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno <= logging.INFO else f"{record.levelname.lower()}: "
        return self.prefix + level + super().format(record)


@contextlib.contextmanager
def _library_logging(verb: str):
    """INFO and above from the library's loggers on stderr while a verb runs (then as before, for callers of
    `main` from Python)."""
    logger = logging.getLogger("transformer_squared")
    handler, level = _StderrHandler(verb), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


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
        with _library_logging(args.verb):
            return args.func(args) or 0
    except (T2Error, ValueError, FileNotFoundError) as e:
        print(f"t2 {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"t2 {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
