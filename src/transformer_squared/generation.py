"""Chat-formatted, batched generation with a Hugging Face causal LM."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import nonneg_float, nonneg_int, option, positive_int, unit_interval

if TYPE_CHECKING:  # torch is imported where text is generated: `t2 -h` builds flags from GenerationConfig
    import torch


@dataclass
class GenerationConfig:
    max_new_tokens: int = option(128, "the most tokens generated per answer", parse=positive_int)
    temperature: float = option(0.0, "sampling temperature; 0 = greedy", parse=nonneg_float)
    top_p: float = option(1.0, "nucleus sampling: the smallest set of tokens holding this much probability",
                          parse=unit_interval)
    batch_size: int = option(16, "prompts per forward pass", parse=positive_int)
    prepack: bool = option(False, "CPU: run linear layers on oneDNN-prepacked weights (faster small-batch decoding; "
                                  "one extra copy of the weights, packed once per expert: see decoding.py)")
    lookup: int = option(0, "prompt lookup decoding: propose up to N next tokens copied from where the last tokens "
                            "occur earlier in the prompt or answer, and check them all in one forward pass; prompts are "
                            "then decoded one at a time (faster batch-1 decoding of answers that reuse the prompt's "
                            "words, in bf16 above all; the same decoding rule, but in bf16 the rounding of a "
                            "checked position differs and an answer can change after a near-tie); 0 = off",
                   parse=nonneg_int)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError("--max-new-tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("--temperature must be >= 0 (0 means greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError("--top-p must be in (0, 1]")
        if self.lookup < 0:
            raise ValueError("--lookup must be >= 0 (0 turns prompt lookup off)")


def lookup_options(config: GenerationConfig) -> dict:
    """`model.generate` keywords for prompt lookup decoding (transformers' assisted generation with n-gram
    candidates from the context, `PromptLookupCandidateGenerator`): none when it is off.

    Why it pays at batch 1: a decode step reads every weight once whatever the number of positions it scores, and at
    batch 1 reading the weights bounds it. So in bf16, checking N proposed tokens costs about one step, and each
    accepted proposal saves a step. In float32 on a CPU the extra positions' arithmetic shows (BENCHMARKS.md,
    "Prompt lookup decoding": 1.65-1.86× in bf16 with --prepack, 1.11× in float32).
    The candidates come from the context: when the last 2 tokens (1 if 2 do not match) occurred earlier, the N
    tokens that followed them there are proposed.
    The model's own choice at each position decides (greedy: the argmax; sampling: a token drawn from the model's
    distribution, accepted where it equals the proposal), so the output follows the same rule as plain decoding;
    only the rounding of a position scored beside others can differ, as with any change of batch shape.
    transformers runs it for one sequence at a time."""
    return {"prompt_lookup_num_tokens": config.lookup} if config.lookup else {}


def chat_text(tokenizer, prompt: str | list[dict], system: str | None = None) -> str:
    """The prompt with the model's chat template applied (plain text when the model has none)."""
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    if system is not None:
        messages = [{"role": "system", "content": system}, *messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in messages) + "\n"


def encode(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """Left-padded batch; templates already carry their special tokens."""
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def generate_ids(model, tokenizer, texts: list[str], config: GenerationConfig) -> list[torch.Tensor]:
    """New token ids for each text (eos and padding stripped)."""
    import torch

    from .decoding import prepacked

    rows = 1 if config.lookup else config.batch_size  # prompt lookup decodes one sequence at a time
    with torch.no_grad(), prepacked(model, config.prepack):
        outputs: list[torch.Tensor] = []
        for i in range(0, len(texts), rows):
            batch = encode(tokenizer, texts[i : i + rows]).to(model.device)
            sample = config.temperature > 0
            out = model.generate(
                **batch,
                max_new_tokens=config.max_new_tokens,
                do_sample=sample,
                temperature=config.temperature if sample else None,
                top_p=config.top_p if sample else None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
                **lookup_options(config),
            )
            new = out[:, batch["input_ids"].shape[1] :]  # (B, new_tokens)
            for row in new:
                keep = row != tokenizer.pad_token_id
                if tokenizer.eos_token_id is not None:
                    eos = (row == tokenizer.eos_token_id).nonzero()
                    if len(eos):
                        keep[int(eos[0]) :] = False
                outputs.append(row[keep])
        return outputs


def generate(model, tokenizer, prompts: str | list[str | list[dict]], config: GenerationConfig | None = None,
             system: str | None = None, **options) -> str | list[str]:
    """Answer each prompt (a user message or a message list) with the chat template applied; one prompt given as
    a string gets one string back. `options` are GenerationConfig fields (`max_new_tokens=64`, `temperature=0.7`)
    for when no `config` is passed."""
    if options and config is not None:
        raise ValueError("pass a GenerationConfig or its fields as keywords (max_new_tokens=...), not both")
    config = config or GenerationConfig(**options)
    single = isinstance(prompts, str)
    texts = [chat_text(tokenizer, p, system) for p in ([prompts] if single else prompts)]
    answers = [tokenizer.decode(ids, skip_special_tokens=True) for ids in generate_ids(model, tokenizer, texts, config)]
    return answers[0] if single else answers
