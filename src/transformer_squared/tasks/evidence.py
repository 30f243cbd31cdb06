"""Evidence from a sandboxed program: a type-exact plain-data codec, and the harness that runs inside the sandbox.

This file has two lives. The judge (`tasks/judge.py`, in the trusted parent) imports it for `decode`; and its
source, followed by one call to `main`, *is* the program the sandbox runs. Inside, `main` works in one of three
modes (see judge.py for who runs which and why):

    probe    exec the candidate's code in a fresh namespace, then run the steps: exec a statement, evaluate an
             expression ("probe"), or call a function with decoded arguments ("call"); send one record per probe
             or call: {"value": <encoded>} or {"error": "<exception type>"}.
    record   (no candidate code) run a test's check() with the reference solution behind a recorder; send the
             arguments of every call it makes, then {"done": n}. With outputs=True (the fallback without a
             reference, on the candidate's code) the outputs too.
    replay   (no candidate code) run check() with a stand-in that returns recorded outputs in order, refusing
             arguments that differ from the recorded ones; send {"verdict": "pass"} if check() returns.

Records go, one JSON line each, to a duplicate of the original stdout; the program's own fd 1 is pointed at its
stderr first, so what the candidate prints never mixes with them. That is tidiness, not security: the candidate
shares this process, so it can reach anything here (gc, frames, /proc/self), write records itself, or patch the
codec. The judge therefore treats every record of a probe run as chosen by the candidate: it decides only from
values, holding the expected ones itself.

`encode` accepts exactly None, bool, int, float, complex, str, bytes, list, tuple, dict, set and frozenset (and
collections' Counter, OrderedDict, defaultdict) — `type(x) is T`, so no subclass (an int whose `__eq__` always
answers True is not an int here) — nested at most MAX_DEPTH deep. `decode` rebuilds genuine built-in objects
from JSON and rejects anything else.
"""

from __future__ import annotations

import builtins
import collections
import json
import os
import random

MAX_DEPTH = 64
_ATOMS = {"int", "float", "complex", "str", "bytes"}
_SEQUENCES = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}
# dict subclasses of the standard library that honest solutions return (Counter, defaultdict): carried as what
# they are, and rebuilt as the genuine class (a defaultdict without its factory), so == behaves exactly as upstream
_MAPPINGS = {"dict": dict, "Counter": collections.Counter, "OrderedDict": collections.OrderedDict,
             "defaultdict": lambda items: collections.defaultdict(None, items)}


class NotPlain(TypeError):
    """A value the codec does not carry (not plain data, nested too deep, or malformed)."""


def encode(value, depth: int = 0):
    """A JSON-able, type-tagged form of plain data; NotPlain for anything else."""
    if depth > MAX_DEPTH:
        raise NotPlain("nested too deep")
    t = type(value)
    if value is None or t is bool:
        return value
    if t is int:
        return {"int": int.__repr__(value)}  # ValueError past sys.int_info's digit limit: not carried
    if t is float:
        return {"float": float.__repr__(value)}
    if t is complex:
        return {"complex": [float.__repr__(value.real), float.__repr__(value.imag)]}
    if t is str:
        return {"str": value}
    if t is bytes:
        return {"bytes": bytes.hex(value)}
    if t is list or t is tuple or t is set or t is frozenset:
        return {t.__name__: [encode(v, depth + 1) for v in value]}
    if t is dict or t is collections.Counter or t is collections.OrderedDict or t is collections.defaultdict:
        return {t.__name__: [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in dict.items(value)]}
    raise NotPlain(f"not plain data: {t.__qualname__}")


def decode(obj, depth: int = 0):
    """The genuine built-in value `encode` described; NotPlain if `obj` is not such a description."""
    if depth > MAX_DEPTH:
        raise NotPlain("nested too deep")
    if obj is None or type(obj) is bool:
        return obj
    if type(obj) is not dict or len(obj) != 1:
        raise NotPlain("malformed value")
    (tag, body), = obj.items()
    try:
        if tag in _ATOMS:
            if tag == "str" and type(body) is str:
                return body
            if tag == "bytes" and type(body) is str:
                return bytes.fromhex(body)
            if tag == "int" and type(body) is str:
                return int(body)
            if tag == "float" and type(body) is str:
                return float(body)
            if tag == "complex" and type(body) is list and len(body) == 2 and all(type(b) is str for b in body):
                return complex(float(body[0]), float(body[1]))
        elif tag in _SEQUENCES and type(body) is list:
            return _SEQUENCES[tag](decode(v, depth + 1) for v in body)
        elif tag in _MAPPINGS and type(body) is list:
            if not all(type(kv) is list and len(kv) == 2 for kv in body):
                raise NotPlain("malformed dict")
            return _MAPPINGS[tag]({decode(k, depth + 1): decode(v, depth + 1) for k, v in body})
    except (ValueError, TypeError, OverflowError) as e:  # e.g. bad digits, an unhashable set element
        raise NotPlain(f"malformed {tag}: {e}") from None
    raise NotPlain(f"malformed value tagged {tag!r}")


def dumps(value) -> str:
    """One canonical JSON text of plain data (equal values of equal types give equal texts, sets aside)."""
    return json.dumps(encode(value), ensure_ascii=True, separators=(",", ":"))


# ------------------------------------------------------------------------------------------ inside the sandbox


def main(mode: str, **job) -> None:
    """Run one job (see the module docstring) and end the process, whatever threads the candidate started."""
    channel = os.dup(1)
    os.dup2(2, 1)  # the program's prints go to stderr from now on
    write, dumps_ = os.write, json.dumps  # held before any other code runs

    def send(**record) -> None:
        write(channel, (dumps_(record, ensure_ascii=True, separators=(",", ":")) + "\n").encode())

    try:
        {"probe": _probe, "record": _record, "replay": _replay}[mode](send, **job)
    except BaseException as e:  # noqa: BLE001 - SystemExit, KeyboardInterrupt...: the run is over, say how
        send(crash=type(e).__name__)
    os._exit(0)


def _namespace() -> dict:
    return {"__name__": "__main__", "__builtins__": builtins}


def _probe(send, candidate: str, steps: list) -> None:
    ns = _namespace()
    exec(compile(candidate, "<candidate>", "exec"), ns)  # noqa: S102 - this is the sandbox
    for step in steps:
        kind, source = step[0], step[1]
        if kind == "exec":
            exec(compile(source, "<test>", "exec"), ns)  # noqa: S102
            continue
        try:
            if kind == "probe":
                value = eval(compile(source, "<test>", "eval"), ns)  # noqa: S307
            else:  # "call": source names the function, step[2] holds the encoded arguments
                value = ns[source](*decode(json.loads(step[2])))
            record = encode(value)
        except BaseException as e:  # noqa: BLE001 - a probe that raises, or exits, failed
            send(error=type(e).__name__)
            if isinstance(e, (SystemExit, KeyboardInterrupt)):
                raise
            continue
        send(value=record)


def _record(send, program: str, entry: str, seed: int, outputs: bool = False) -> None:
    ns = _namespace()
    exec(compile(program, "<reference>", "exec"), ns)  # noqa: S102
    reference, calls = ns[entry], []

    def recorder(*args):
        calls.append({"args": dumps(args)})  # before the call: the reference may mutate its arguments
        state = random.getstate()  # the reference's own use of random must not move check()'s stream
        try:
            out = reference(*args)
        finally:
            random.setstate(state)
        if outputs:
            calls[-1]["output"] = encode(out)
        return out

    ns[entry] = recorder
    random.seed(seed)
    ns["check"](recorder)
    for call in calls:
        send(**call)
    send(done=len(calls))


def _replay(send, program: str, entry: str, seed: int, calls: list) -> None:
    ns = _namespace()
    exec(compile(program, "<test>", "exec"), ns)  # noqa: S102
    position = [0]

    def replay(*args):
        i = position[0]
        if i >= len(calls) or dumps(args) != calls[i][0]:
            raise AssertionError(f"call {i} differs from the recorded calls")
        position[0] += 1
        return decode(json.loads(calls[i][1]))

    ns[entry] = replay
    random.seed(seed)
    ns["check"](replay)
    if position[0] != len(calls):
        raise AssertionError(f"check() made {position[0]} of {len(calls)} calls")
    send(verdict="pass")
