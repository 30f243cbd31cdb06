"""An expert exported as GGUF, answered by llama.cpp beside `t2 generate --expert`: greedy agreement and decode speed.

The expert is merged and written with `gguf_export.export_gguf` (f32 and f16), loaded by llama.cpp through
llama-cpp-python, and asked the task's first `--n` test prompts greedily; each prompt is the same chat-formatted
text `t2 generate` builds (the tokenizer's chat template), given to llama.cpp as raw text (its tokenizer parses the
special tokens). Agreement = completions equal character for character after stripping. Decode speed is tokens/s
of one prompt at a time (batch 1) on both sides, same thread count.

llama-cpp-python has no binary wheel for this machine; it builds from source (`pip install llama-cpp-python`,
about 15 minutes on 2 cores). Without it the script says so and exits 0.

    OMP_NUM_THREADS=2 python bench/bench_gguf_llamacpp.py --expert /path/to/expert --task arithmetic --n 50
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from transformer_squared.experts import Expert
from transformer_squared.generation import chat_text, generate
from transformer_squared.gguf_export import export_gguf
from transformer_squared.svf import load_svf
from transformer_squared.tasks import get_task


def llama_answers(path, texts: list[str], max_new: int, threads: int) -> tuple[list[str], float]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=512, n_threads=threads, n_batch=512, verbose=False, seed=0)
    answers, tokens, seconds = [], 0, 0.0
    for text in texts:
        t0 = time.perf_counter()
        out = llm.create_completion(text, max_tokens=max_new, temperature=0.0, top_k=1, repeat_penalty=1.0)
        seconds += time.perf_counter() - t0
        answers.append(out["choices"][0]["text"])
        tokens += out["usage"]["completion_tokens"]
    return answers, tokens / seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--expert", required=True, help="expert folder")
    ap.add_argument("--task", default="arithmetic")
    ap.add_argument("--data", default=None)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--types", nargs="+", default=["f32", "f16"])
    args = ap.parse_args()
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed (pip install llama-cpp-python: it builds llama.cpp from source)")
        return 0
    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    torch.set_num_threads(threads)

    expert = Expert.load(args.expert)
    svf = load_svf(expert.meta.base_model or "default", targets=expert.meta.targets, dtype="float32", device="cpu")
    prompts = [e["prompt"] for e in get_task(args.task, args.data).examples("test")[: args.n]]
    texts = [chat_text(svf.tokenizer, p) for p in prompts]

    with svf.applied(expert):
        ours = []
        t0, tokens = time.perf_counter(), 0
        for p in prompts:  # batch 1, as llama.cpp below
            a = generate(svf.model, svf.tokenizer, p, max_new_tokens=args.max_new_tokens)
            ours.append(a)
            tokens += len(svf.tokenizer(a, add_special_tokens=False).input_ids)
        ours_tps = tokens / (time.perf_counter() - t0)
    print(f"t2 generate --expert (float32, batch 1): {ours_tps:.1f} tokens/s")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.types:
            path = export_gguf(svf, expert, os.path.join(tmp, f"expert-{kind}.gguf"), gguf_type=kind)
            theirs, tps = llama_answers(path, texts, args.max_new_tokens, threads)
            same = sum(a.strip() == b.strip() for a, b in zip(ours, theirs))
            print(f"llama.cpp {kind}: greedy agreement {same}/{len(prompts)}, {tps:.1f} tokens/s "
                  f"({tps / ours_tps:.2f}x ours)")
            for a, b in list(zip(ours, theirs))[:3]:
                print(f"    t2: {a.strip()!r:40}  llama.cpp: {b.strip()!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
