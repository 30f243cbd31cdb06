"""Where a batch-1 decode step's time goes, in float32 and bf16, on the default model.

    python bench/profile_decode.py [--tokens 32] [--top 12]

For each dtype: (a) `model.generate` greedy tokens/s, (b) a bare loop of model forwards with a DynamicCache and
argmax (no logits processors, stopping criteria or per-step bookkeeping), (c) torch.profiler over 8 bare steps:
operator calls per step and the operators with the most self CPU time. (a) − (b) is what generate adds per token;
(b) divided by the calls per step is the per-operator cost that bounds a small model at batch 1.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch


def bare_loop(model, ids, mask, tokens: int) -> float:
    """Seconds per token of prefill-then-argmax decoding with a DynamicCache."""
    from transformers import DynamicCache

    with torch.no_grad():
        cache = DynamicCache()
        out = model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(tokens):
            mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
            out = model(input_ids=nxt, attention_mask=mask, cache=cache, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        return (time.perf_counter() - t0) / tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    from transformers import DynamicCache

    from transformer_squared.generation import chat_text, encode
    from transformer_squared.models import load_model

    print(f"threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f} (shared machine)")
    for dtype in ("float32", "bfloat16"):
        lm = load_model("default", dtype=dtype)
        model, tok = lm.model, lm.tokenizer
        batch = encode(tok, [chat_text(tok, "Write a short story about a robot who learns to paint.")])
        ids, mask = batch["input_ids"], batch["attention_mask"]
        with torch.no_grad():
            model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)  # warm-up
            t0 = time.perf_counter()
            out = model.generate(**batch, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            gen = (time.perf_counter() - t0) / (out.shape[1] - ids.shape[1])
        bare_loop(model, ids, mask, 4)  # warm-up
        bare = bare_loop(model, ids, mask, args.tokens)
        with torch.no_grad():
            cache = DynamicCache()
            model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1)
            nxt, m = ids[:, -1:], mask
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                for _ in range(8):
                    m = torch.cat([m, m.new_ones(1, 1)], dim=1)
                    o = model(input_ids=nxt, attention_mask=m, cache=cache, use_cache=True)
                    nxt = o.logits[:, -1].argmax(-1, keepdim=True)
        events = prof.key_averages()
        calls = sum(e.count for e in events if e.key.startswith("aten::")) / 8
        print(f"\n{dtype}: generate {gen * 1e3:.1f} ms/token ({1 / gen:.1f} tok/s); bare forward loop "
              f"{bare * 1e3:.1f} ms/token ({1 / bare:.1f} tok/s); generate overhead {(gen - bare) * 1e3:.1f} ms/token; "
              f"{calls:.0f} aten calls per step = {bare / calls * 1e6:.0f} µs per call")
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
