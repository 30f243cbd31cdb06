"""Typed configs as command-line flags: a config is a dataclass whose fields are made with `option(...)`, which keeps
the flag's help (and, where a bad value should be refused as it is parsed, its argparse `type=` check) in the field's
metadata, as PEFT and HfArgumentParser do. `add_dataclass_args` turns the fields into flags, one per field
(`group_size` → `--group-size`); `config_from_args` builds the config back from the parsed flags (and from a YAML
`--config` where the verb has one). Standard library only, so that `t2 -h` stays instant.

A range check is a `type=` function, so argparse rejects a bad value where the flag is parsed, with a message that
names the flag (`t2 eval: error: argument --n: must be an integer >= 1, not 0`), before any model is loaded; what a
field's type cannot say alone (combinations, choices checked in library code) is checked by the config's
`__post_init__`, which names the flag too.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

# -- numeric ranges (argparse `type=` checks) ----------------------------------------------------------------------


def _number(kind, text: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{'an integer' if kind is int else 'a number'} is expected, not {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value


def _checked(name: str, kind, ok, rule: str):
    """An argparse `type=` check: parse a `kind` number, then refuse it unless `ok(value)`, saying `rule`."""
    def parse(text: str):
        value = _number(kind, text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{rule}, not {text}")
        return value

    parse.__name__ = parse.__qualname__ = name
    return parse


positive_int = _checked("positive_int", int, lambda v: v >= 1, "must be an integer >= 1")
nonneg_int = _checked("nonneg_int", int, lambda v: v >= 0, "must be an integer >= 0")
positive_float = _checked("positive_float", float, lambda v: v > 0, "must be a number > 0")
nonneg_float = _checked("nonneg_float", float, lambda v: v >= 0, "must be a number >= 0")
unit_interval = _checked("unit_interval", float, lambda v: 0 < v <= 1, "must be in (0, 1]")  # e.g. top-p
cosine = _checked("cosine", float, lambda v: -1 <= v <= 1, "is a cosine similarity: must be in [-1, 1]")
port = _checked("port", int, lambda v: 0 < v < 65536, "must be a TCP port in 1..65535")


def finite_float(text: str) -> float:
    return _number(float, text)


# -- fields ------------------------------------------------------------------------------------------------------

def option(default=dataclasses.MISSING, help: str = "", *, factory=None, parse=None, choices=None,
           metavar: str | None = None):
    """A config field that is a flag: `help` is its help text; `parse` an argparse `type=` check (default: from the
    field's type); `choices` a sequence, or a function returning one (called when the flag is made, so that a
    registry is only imported then)."""
    metadata = {"help": help, "parse": parse, "choices": choices, "metavar": metavar}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")  # precision.DTYPE_CHOICES, without importing torch


def device_option():
    """`--device`, the same in every verb."""
    return option("auto", "auto (CUDA if present, else CPU), cpu, cuda, cuda:N or mps")


def dtype_option():
    """`--dtype`, the same in every verb."""
    return option("auto", "compute dtype; auto = bfloat16 on CUDA and on CPUs with native bf16 units, else float32 "
                          "(z, optimiser state and the SVD stay float32 either way)", choices=DTYPE_NAMES)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _kind(f: dataclasses.Field) -> str:
    """'int', 'float', 'bool', 'list' or 'str' from the annotation (a string under `from __future__ import
    annotations`); `X | None` is X."""
    text = str(f.type).replace(" ", "").replace("|None", "").replace("None|", "")
    return "list" if text.startswith("list") else text if text in ("int", "float", "bool") else "str"


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def add_dataclass_args(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (),
                       defaults: dict | None = None, layered: bool = False) -> None:
    """One flag per field of `cls` (`--group-size`), with the field's help, defaulting to the field's default, or to
    `defaults[name]` for this parser only (shown in its help too). `layered`: every flag defaults to None instead,
    so that a value from a YAML --config is only overridden by a flag that is given (`config_from_args` fills in
    the rest)."""
    defaults = defaults or {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        meta = f.metadata
        default = defaults.get(f.name, _default(f))
        text = meta.get("help", "")
        if default not in (None, "") and "(default" not in text and not isinstance(default, bool):
            text = f"{text} (default: {' '.join(default) if isinstance(default, list) else default})"
        kwargs = {"default": None if layered else default, "help": text}
        kind = _kind(f)
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction if default else "store_true"  # --no-x: a default off
        else:
            if kind == "list":
                kwargs["nargs"] = "+"
            kwargs["type"] = meta.get("parse") or {"int": int, "float": float}.get(kind, str)
            choices = meta.get("choices")
            if choices is not None:
                kwargs["choices"] = list(choices() if callable(choices) else choices)
            if meta.get("metavar"):
                kwargs["metavar"] = meta["metavar"]
        parser.add_argument(flag_name(f.name), **kwargs)


def config_from_args(args: argparse.Namespace, cls):
    """The config `cls` from YAML (--config, where the verb has it) first, then from every flag given."""
    values: dict = {}
    if getattr(args, "config", None):
        values.update(_from_yaml(Path(args.config), cls))
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return cls(**values)


def _from_yaml(path: Path, cls) -> dict:
    import yaml

    if not path.is_file():
        raise ValueError(f"--config {path}: no such file")
    loaded = yaml.safe_load(path.read_text()) or {}
    kinds = {f.name: _kind(f) for f in dataclasses.fields(cls)}
    unknown = sorted(set(loaded) - set(kinds))
    if unknown:
        raise ValueError(f"--config {path}: unknown field(s) {', '.join(unknown)}")
    for name, value in loaded.items():  # YAML reads `1e-3` as a string: convert to the field's type
        kind = {"int": int, "float": float}.get(kinds[name])
        if kind is not None and value is not None and not isinstance(value, bool):
            try:
                loaded[name] = kind(value)
            except (TypeError, ValueError):
                raise ValueError(f"--config {path}: {name} must be a number, got {value!r}") from None
    return loaded
