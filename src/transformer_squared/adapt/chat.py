"""A multi-turn chat with two-pass self-adaptation: everything of `t2 chat` except the terminal.

    session = ChatSession(svf, library, strategy="embedding")
    turn = session.ask("What is 12 * 7?", on_text=print)     # Turn(text, selection, pass1_s, pass2_s, ...)
    session.command("/expert math")                            # pin an expert; "/auto" unpins

Each answer runs pass 1 on the conversation (strategies read its last user message) unless an expert or mixture is
pinned, then pass 2 streams the answer with those weights. Context: the system message plus as many of the newest
turns as fit so that prompt + `max_new_tokens` ≤ the model's window; older turns are dropped whole (a user message
with its answer). When even the newest message alone leaves fewer than `max_new_tokens` tokens, the answer gets the
room that is left; with no room at all the message is refused.

An interrupted answer (KeyboardInterrupt while streaming, i.e. Ctrl-C in `t2 chat`) is not kept: neither the
question nor the partial answer enters the history, and the model's weights are restored by `svf.applied`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..generation import GenerationConfig, chat_text, lookup_options
from .strategy import Selection

COMMANDS = {
    "/expert NAME": "pin an expert for the next answers (NAME = a library expert, or 'base')",
    "/mix A=W B=W": "pin a mixture z = Σ w·z of library experts, e.g. /mix math=0.6 code=0.4",
    "/auto": "unpin: pass 1 chooses again",
    "/strategy NAME": "switch the pass-1 strategy (base, prompt, classifier, embedding)",
    "/clear": "forget the conversation",
    "/help": "this list",
    "/quit": "leave (Ctrl-D too)",
}


class ChatError(ValueError):
    """A command or message that cannot be used; the message says why."""


class Quit(Exception):
    pass


@dataclass
class Turn:
    text: str
    selection: Selection
    pass1_s: float
    pass2_s: float
    prompt_tokens: int
    completion_tokens: int
    dropped_turns: int  # older turns left out to fit the window
    pinned: bool


class _Streamer:
    """transformers' streamer protocol (put/end): decodes the new tokens so far, hands on the text not yet handed on.
    Text that ends in an incomplete UTF-8 sequence (decoded as U+FFFD) is held back until it completes."""

    def __init__(self, tokenizer, on_text, prompt_len: int):
        self.tokenizer, self.on_text, self.prompt_len = tokenizer, on_text, prompt_len
        self.ids: list[int] = []
        self.sent = 0
        self.skipped_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self.skipped_prompt:  # generate() first hands over the prompt
            self.skipped_prompt = True
            return
        self.ids += value.reshape(-1).tolist()
        self._emit(final=False)

    def end(self) -> None:
        self._emit(final=True)

    def _emit(self, final: bool) -> None:
        text = self.text
        if not final and text.endswith("\ufffd"):
            return
        if len(text) > self.sent:
            self.on_text(text[self.sent :])
            self.sent = len(text)

    @property
    def text(self) -> str:
        eos = self.tokenizer.eos_token_id
        ids = self.ids[: self.ids.index(eos)] if eos is not None and eos in self.ids else self.ids
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class ChatSession:
    def __init__(self, svf, library, strategy: str = "base", strategy_options: dict | None = None,
                 config: GenerationConfig | None = None, system: str | None = None, usage=None):
        self.svf, self.library, self.system, self.usage = svf, library, system, usage
        self.config = config or GenerationConfig(max_new_tokens=256)
        self.strategy_options = strategy_options or {}
        self.history: list[dict] = []
        self.pinned: Selection | None = None
        self.strategy = None
        self.strategy_name = ""
        self.set_strategy(strategy)
        self.window = getattr(svf.model.config, "max_position_embeddings", None) or 2048

    # -- commands -------------------------------------------------------------------------------------------------
    def set_strategy(self, name: str) -> None:
        from . import STRATEGIES, build_strategy

        if name == "cem" or name not in STRATEGIES:
            raise ChatError(f"/strategy {name!r}: choose one of {', '.join(s for s in STRATEGIES if s != 'cem')}")
        self.strategy = build_strategy(name, self.svf, self.library, **self.strategy_options)
        self.strategy_name = name

    def pin(self, name: str) -> Selection:
        if name == "base":
            self.pinned = Selection("base", None)
            return self.pinned
        expert = self.library.get(name)
        expert.check_compatible(self.svf)
        self.pinned = Selection(expert.name, expert)
        return self.pinned

    def pin_mixture(self, weights: dict[str, float]) -> Selection:
        if not weights:
            raise ChatError("/mix needs weights, e.g. /mix math=0.6 code=0.4")
        mixed = self.library.mix(weights)
        mixed.meta.name = "mix(" + ",".join(f"{n}={w:g}" for n, w in weights.items()) + ")"
        mixed.check_compatible(self.svf)
        self.pinned = Selection("mixture", mixed)
        return self.pinned

    def command(self, line: str) -> str:
        """Run a /command; returns what to tell the user. Raises Quit for /quit, ChatError for a bad command."""
        verb, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if verb in ("/quit", "/exit"):
            raise Quit
        if verb == "/help":
            return "\n".join(f"  {k:16} {v}" for k, v in COMMANDS.items())
        if verb == "/clear":
            self.history.clear()
            return "conversation cleared"
        if verb == "/auto":
            self.pinned = None
            return f"pass 1 ({self.strategy_name}) chooses again"
        if verb == "/expert":
            if not rest:
                raise ChatError(f"/expert needs a name: one of {', '.join(self.library.names()) or 'none'} or base")
            return f"pinned {self.pin(rest).name} (/auto to unpin)"
        if verb == "/mix":
            return f"pinned {self.pin_mixture(parse_mixture(rest)).name} (/auto to unpin)"
        if verb == "/strategy":
            if not rest:
                raise ChatError(f"/strategy needs a name (now: {self.strategy_name})")
            self.set_strategy(rest)
            return f"strategy {self.strategy_name}" + (" (an expert is pinned: /auto to use it)" if self.pinned else "")
        raise ChatError(f"unknown command {verb!r}; /help lists them")

    # -- answering ------------------------------------------------------------------------------------------------
    def _fit(self, message: str) -> tuple[list[dict], list[int], int, int]:
        """(messages, prompt ids, max_new_tokens, turns dropped) for the newest context that fits the window."""
        tokenizer = self.svf.tokenizer
        pairs = [self.history[i : i + 2] for i in range(0, len(self.history), 2)]
        for dropped in range(len(pairs) + 1):
            messages = [m for pair in pairs[dropped:] for m in pair] + [{"role": "user", "content": message}]
            ids = tokenizer(chat_text(tokenizer, messages, self.system), add_special_tokens=False)["input_ids"]
            room = self.window - len(ids)
            if room >= self.config.max_new_tokens or (dropped == len(pairs) and room >= 1):
                return messages, ids, min(room, self.config.max_new_tokens), dropped
        raise ChatError(f"the message is {len(ids)} tokens with the system prompt; the model's window is "
                        f"{self.window}: shorten it")

    def select(self, messages: list[dict]) -> tuple[Selection, float]:
        if self.pinned is not None:
            return self.pinned, 0.0
        with self.svf.applied(None):  # pass 1 sees the base weights
            t0 = time.perf_counter()
            selection = self.strategy.select(self.svf, [messages])[0]
        return selection, time.perf_counter() - t0

    @torch.no_grad()
    def ask(self, message: str, on_text=lambda text: None, on_selection=lambda selection: None) -> Turn:
        """Answer `message` in the conversation, streaming text to `on_text`; `on_selection` hears pass 1's choice
        before pass 2 starts. KeyboardInterrupt stops the answer and leaves the history as it was."""
        if not message.strip():
            raise ChatError("empty message")
        messages, ids, max_new, dropped = self._fit(message)
        selection, pass1 = self.select(messages)
        on_selection(selection)
        tokenizer = self.svf.tokenizer
        streamer = _Streamer(tokenizer, on_text, len(ids))
        sample = self.config.temperature > 0
        t1 = time.perf_counter()
        with self.svf.applied(selection.expert):
            input_ids = torch.tensor([ids], device=self.svf.model.device)
            self.svf.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                    max_new_tokens=max_new, do_sample=sample,
                                    temperature=self.config.temperature if sample else None,
                                    top_p=self.config.top_p if sample else None, top_k=None,
                                    pad_token_id=tokenizer.pad_token_id, streamer=streamer,
                                    **lookup_options(self.config))
        pass2 = time.perf_counter() - t1
        text = streamer.text
        self.history = messages + [{"role": "assistant", "content": text}]
        if self.usage is not None:
            self.usage.count(selection.name)
        return Turn(text, selection, pass1, pass2, len(ids), len(streamer.ids), dropped, self.pinned is not None)


def parse_mixture(text: str) -> dict[str, float]:
    weights = {}
    for item in text.split():
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            weights[name] = float(value)
        except ValueError:
            raise ChatError(f"bad weight {item!r}: write NAME=WEIGHT, e.g. /mix math=0.6 code=0.4") from None
    return weights
