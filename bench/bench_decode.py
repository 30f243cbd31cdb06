"""Small-batch decode tokens/s: plain `model.generate` vs the same inside `decoding.prepacked` (oneDNN-packed linear
weights), side by side in one process, interleaved and repeated; the default model.

    python bench/bench_decode.py [--dtypes float32 bfloat16] [--batches 1 4] [--tokens 32] [--repeats 3]
    python bench/bench_decode.py --lookup 4 10 [--dtypes bfloat16] [--tokens 96] [--repeats 2] [--start 4]

Per dtype and batch size: median tokens/s of each path, their ratio, the first packed call's extra seconds (the
packing: paid once per weight version), and whether the greedy tokens are equal. Also times repacking after an
expert-like weight swap (every MLP weight replaced by a new tensor, as SVFModel.apply does) to show that it is seen.

`--compile` adds, at the first batch size, transformers' static KV cache + `torch.compile` (inductor, no CUDA graphs)
against the plain path: its compile seconds (the first call), tokens/s and greedy agreement; `--freezing` compiles
with inductor's freezing (weights become constants, linears get oneDNN-packed) instead; `--compile-prepacked`
compiles with the linears as an opaque custom op on packed weights (an experiment: decoding.prepacked itself
checks weight addresses in Python, which dynamo cannot trace).

`--lookup N [N ...]` times batch-1 answers of four kinds of prompt (ARC-Easy option text, MBPP code, GSM8K, open chat; the
data sets from ../shared/data) instead, each answered to its natural end (at most --tokens): plain `generate`,
`--prepack`, and for each N prompt lookup decoding with N proposed tokens (`--lookup N`, generation.lookup_options)
alone and with `--prepack`, interleaved prompt by prompt. Per kind and overall: tokens/s of each path, its ratio to
plain, and how many answers equal the plain greedy answer. `--start 4` takes the next 4 prompts of each kind instead:
a second set, to confirm a choice of N made on the first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch


def timed_generate(model, batch, tokens: int, pad: int, **options) -> tuple[torch.Tensor, float]:
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=pad,
                             **options)
        return out, time.perf_counter() - t0


def _packed_linear_op():
    """nn.Linear.forward as a custom op on a packed copy of the weight (cached by address; the bench keeps weights)."""
    packs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.library.custom_op("t2bench::packed_linear", mutates_args=())
    def packed_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if w.data_ptr() not in packs:
            packs[w.data_ptr()] = (w, torch.ops.mkldnn._reorder_linear_weight(w, 1))
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), packs[w.data_ptr()][1], None, "none", [], "")
        return y.reshape(*x.shape[:-1], w.shape[0])

    @packed_linear.register_fake
    def _(x, w):
        return x.new_empty(*x.shape[:-1], w.shape[0])

    return lambda self, x: packed_linear(x, self.weight) if self.bias is None else torch.nn.Linear.forward(self, x)


def compiled_side_by_side(model, batch, tokens: int, pad: int, repeats: int, packed: bool = False) -> str:
    """Static cache + torch.compile vs plain generate: compile seconds, tokens/s ratio, greedy agreement."""
    from transformers import CompileConfig

    config = CompileConfig(fullgraph=False, dynamic=False, mode="default")  # "reduce-overhead" = CUDA graphs
    config._compile_all_devices = True  # transformers compiles only on accelerators unless told
    options = dict(cache_implementation="static", compile_config=config)
    plain_forward = torch.nn.Linear.forward
    fast_forward = _packed_linear_op() if packed else plain_forward

    def compiled(*a):
        torch.nn.Linear.forward = fast_forward  # the class's: what the compiled graph traced
        try:
            return timed_generate(*a, **options)
        finally:
            torch.nn.Linear.forward = plain_forward

    try:
        _, first = compiled(model, batch, tokens, pad)
        plain, fast, same = [], [], True
        for _ in range(repeats):
            a, ta = timed_generate(model, batch, tokens, pad)
            b, tb = compiled(model, batch, tokens, pad)
            rows = batch["input_ids"].shape[0]
            plain.append(rows * tokens / ta)
            fast.append(rows * tokens / tb)
            same &= torch.equal(a, b)
    except Exception as e:  # noqa: BLE001 - a benchmark reports what broke
        return f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
    p, f = statistics.median(plain), statistics.median(fast)
    return (f"plain {p:.1f} tok/s, compiled {f:.1f} tok/s, x{f / p:.2f}; first call (compiling) {first:.0f} s; "
            f"greedy tokens equal: {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time static cache + torch.compile")
    ap.add_argument("--freezing", action="store_true", help="compile with inductor freezing")
    ap.add_argument("--compile-prepacked", action="store_true", help="compile with packed linears (custom op)")
    ap.add_argument("--lookup", type=int, nargs="+", default=[], help="time prompt lookup decoding instead, with each "
                                                                      "N proposed tokens given (side by side)")
    ap.add_argument("--start", type=int, default=0, help="--lookup: the prompts from this index on (4: held-out set)")
    ap.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    args = ap.parse_args()
    if args.lookup:
        for dtype in args.dtypes:
            lookup_side_by_side(dtype, args)
        return
    if args.freezing:
        import torch._inductor.config as inductor

        inductor.freezing = args.compile = True
    args.compile |= args.compile_prepacked
    from transformer_squared.decoding import prepacked
    from transformer_squared.generation import chat_text, encode
    from transformer_squared.models import load_model

    prompts = ["Write a short story about a robot who learns to paint.", "What is the capital of France?",
               "List three prime numbers.", "Explain photosynthesis in one sentence."] * 4
    print(f"threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f} (shared machine), {args.tokens} tokens")
    for dtype in args.dtypes:
        lm = load_model("default", dtype=dtype)
        model, tok = lm.model, lm.tokenizer
        pad = tok.pad_token_id
        for B in args.batches:
            batch = encode(tok, [chat_text(tok, p) for p in prompts[:B]])
            timed_generate(model, batch, 4, pad)  # warm-up
            with prepacked(model):
                t0 = time.perf_counter()
                timed_generate(model, batch, 4, pad)
                first = time.perf_counter() - t0
                timed_generate(model, batch, 4, pad)
                _, warm4 = timed_generate(model, batch, 4, pad)
                plain, fast, same = [], [], True
                for _ in range(args.repeats):  # interleaved: both sides see the same load
                    a, ta = _plain(model, batch, args.tokens, pad)
                    b, tb = timed_generate(model, batch, args.tokens, pad)
                    plain.append(B * args.tokens / ta)
                    fast.append(B * args.tokens / tb)
                    same &= torch.equal(a, b)
                swap = _swap_seconds(model, batch, pad) if B == args.batches[0] else None
            p, f = statistics.median(plain), statistics.median(fast)
            print(f"{dtype:8s} batch {B}: plain {p:6.1f} tok/s, prepacked {f:6.1f} tok/s, x{f / p:.2f} "
                  f"(runs x{', x'.join(f'{b / a:.2f}' for a, b in zip(plain, fast))}); packing {first - warm4:.2f} s "
                  f"once; greedy tokens equal: {same}; load {os.getloadavg()[0]:.1f}"
                  + (f"; repack after a weight swap {swap:.2f} s" if swap is not None else ""), flush=True)
            if args.compile and B == args.batches[0]:
                how = " (freezing)" if args.freezing else " (prepacked linears)" if args.compile_prepacked else ""
                print(f"{dtype:8s} batch {B}: static cache + torch.compile{how}: "
                      f"{compiled_side_by_side(model, batch, args.tokens, pad, args.repeats, args.compile_prepacked)}; "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
        del model, lm


LOOKUP_CHAT = ["Explain in a few sentences why the sky is blue.", "Write a short poem about autumn leaves.",
               "Rewrite this more politely: send me the report now, I have waited all week.",
               "What are three tips for learning a new language?",
               "Describe how a bicycle works to a ten-year-old.", "Give me a recipe for a simple tomato soup.",
               "Translate into French: The library opens at nine and closes at six.",
               "What is the difference between weather and climate?"]


def lookup_prompts(data_dir: str, n: int, start: int = 0) -> dict[str, list[str]]:
    """n prompts of each kind from the start-th on: test examples of ARC-Easy (option text), MBPP and GSM8K, and
    open chat (8 written here: --start 4 gives a second, held-out set)."""
    from transformer_squared.cli.options import data_folder
    from transformer_squared.tasks import get_task

    kinds = {"chat": LOOKUP_CHAT[start : start + n]}
    for task in ("arc_text", "mbpp", "gsm8k"):
        path = os.path.join(data_dir, data_folder(task))
        if os.path.isdir(path):
            kinds[task] = [e["prompt"] for e in get_task(task, data=path).examples("test")[start : start + n]]
        else:
            print(f"  ({task}: no {path}, left out)")
    return kinds


def lookup_side_by_side(dtype: str, args) -> None:
    """Batch-1 answers to their natural end: plain, prepacked, prompt lookup, both; interleaved prompt by prompt."""
    from transformer_squared.decoding import prepacked
    from transformer_squared.generation import GenerationConfig, chat_text, encode, lookup_options
    from transformer_squared.models import load_model

    lm = load_model("default", dtype=dtype)
    model, tok = lm.model, lm.tokenizer
    paths = {"plain": (False, {}), "prepack": (True, {})}
    for n in args.lookup:
        options = lookup_options(GenerationConfig(lookup=n))
        paths.update({f"lookup {n}": (False, options), f"prepack + lookup {n}": (True, options)})

    def answer(text: str, pack: bool, extra: dict) -> tuple[torch.Tensor, float]:
        """Inside the prepacked context below: packed linears, or (pack False) the plain path."""
        def run():
            batch = encode(tok, [text])
            with torch.no_grad():
                t0 = time.perf_counter()
                out = model.generate(**batch, max_new_tokens=args.tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id, **extra)
                return out[0, batch["input_ids"].shape[1]:], time.perf_counter() - t0
        return run() if pack else _plain_call(model, run)

    print(f"{dtype}, batch 1, answers to their end (at most {args.tokens} tokens), threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.1f}")
    with prepacked(model):  # one set of packs for every packed call (as t2 chat holds them for a session)
        for pack, extra in paths.values():
            answer(chat_text(tok, "Say hello."), pack, extra)  # warm-up (and the packing)
        totals = {name: [0, 0.0, 0] for name in paths}  # tokens, seconds, answers equal to plain
        for kind, prompts in lookup_prompts(args.data_dir, 4, args.start).items():
            rows = {name: [0, 0.0, 0] for name in paths}
            for prompt in prompts:
                text = chat_text(tok, prompt)
                for _ in range(args.repeats):
                    reference = None
                    for name, (pack, extra) in paths.items():
                        ids, secs = answer(text, pack, extra)
                        reference = ids if reference is None else reference
                        rows[name][0] += len(ids)
                        rows[name][1] += secs
                        rows[name][2] += int(torch.equal(ids, reference))
            base, answers = rows["plain"][0] / rows["plain"][1], len(prompts) * args.repeats
            print(f"  {kind:9s} " + "; ".join(f"{name} {t / s:5.1f} tok/s x{t / s / base:.2f} ({eq}/{answers} equal)"
                                             for name, (t, s, eq) in rows.items()), flush=True)
            for name, row in rows.items():
                totals[name] = [a + b for a, b in zip(totals[name], row)]
    base = totals["plain"][0] / totals["plain"][1]
    print("  all       " + "; ".join(f"{name} {t / s:5.1f} tok/s x{t / s / base:.2f}"
                                     for name, (t, s, _) in totals.items()) + f"; load {os.getloadavg()[0]:.1f}",
          flush=True)


def _plain_call(model, call):
    """`call()` with the packs of an open prepacked context put aside: the plain path."""
    from transformer_squared.decoding import _STATE

    saved = {}
    for m in model.modules():
        if hasattr(m, _STATE):
            saved[m] = m.forward
            del m.forward
    try:
        return call()
    finally:
        for m, fwd in saved.items():
            m.forward = fwd


def _plain(model, batch, tokens, pad):
    """The plain path while a prepacked context is open."""
    return _plain_call(model, lambda: timed_generate(model, batch, tokens, pad))


def _swap_seconds(model, batch, pad) -> float:
    """Replace every MLP weight by a new tensor (a perturbed copy), time a 4-token generate, check it changed."""
    mlps = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".mlp." in n]
    old = [m.weight.data for m in mlps]
    before, _ = timed_generate(model, batch, 4, pad)
    _, t4 = timed_generate(model, batch, 4, pad)
    for m in mlps:
        m.weight.data = m.weight.data * 1.5
    _, t = timed_generate(model, batch, 4, pad)
    changed, _ = timed_generate(model, batch, 4, pad)
    for m, w in zip(mlps, old):
        m.weight.data = w
    if torch.equal(before, changed):
        print("  warning: scaled MLP weights gave the same tokens")
    return t - t4


if __name__ == "__main__":
    main()
