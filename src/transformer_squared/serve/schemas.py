"""Request bodies and response objects of the OpenAI API subset that `t2 serve` speaks.

Requests are pydantic models: wrong types or out-of-range values become HTTP 422, in OpenAI's error format
({"error": {"message", "type", "param", "code"}}). Fields of the OpenAI API that we do not use are accepted and
ignored (clients send defaults such as `user`); fields that would change the answer and that we cannot honour
(n > 1, logprobs, tools, penalties, …) are refused with 400 by `unsupported()`, never silently ignored.

One extension, in the request body: ``"mixture": {"expert": weight, ...}`` answers with the experts' mixture
z = Σ wₖ zₖ. Responses are plain dicts shaped like OpenAI's ChatCompletion, ChatCompletionChunk and Completion,
plus top-level fields saying what answered: ``"expert"`` (a name, "base" or "mixture(...)"), ``"mixture"`` (the
weights) and, for model "auto", ``"selection"`` (label, expert, strategy, pass1_ms).
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP = 4
MAX_STOP_CHARS = 256  # per stop sequence


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, content):
        if isinstance(content, list):
            bad = [p.type for p in content if p.type != "text" or p.text is None]
            if bad:
                raise ValueError(f"only text content parts are supported, got {bad[0]!r}")
        return content

    def as_template_message(self) -> dict:
        """{"role", "content"} for the chat template ("developer" is the newer name of "system")."""
        content = self.content if isinstance(self.content, str) or self.content is None else \
            "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content or ""}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class Sampling(BaseModel):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2 ** 63), le=2 ** 64 - 1)  # what torch.Generator.manual_seed takes
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    logprobs: bool | int | None = None
    mixture: dict[str, float] | None = None  # extension: {"expert": weight}

    @field_validator("stop")
    @classmethod
    def _stop(cls, stop):
        stops = [stop] if isinstance(stop, str) else (stop or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop sequence may have at most {MAX_STOP_CHARS} characters")
        return stops

    def unsupported(self) -> tuple[str, str] | None:
        """(param, message) for a request that asks for something we cannot do, else None."""
        if (self.n or 1) > 1:
            return "n", "n > 1 is not supported; send one request per completion"
        if self.logprobs:
            return "logprobs", "logprobs are not supported"
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                return name, f"{name} is not supported (use 0)"
        extra = self.model_extra or {}
        asked = {  # the OpenAI fields that would change the answer, when set to anything but their no-op value
            "tools": bool(extra.get("tools")), "functions": bool(extra.get("functions")),
            "response_format": (extra.get("response_format") or {"type": "text"}) != {"type": "text"},
            "top_logprobs": bool(extra.get("top_logprobs")), "logit_bias": bool(extra.get("logit_bias")),
            "echo": bool(extra.get("echo")), "suffix": bool(extra.get("suffix")),
            "best_of": (extra.get("best_of") or 1) != 1,
        }
        for name, set_ in asked.items():
            if set_:
                return name, f"{name} is not supported by t2 serve"
        return None


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)  # the OpenAI default for /v1/completions

    def text(self) -> str | None:
        """The prompt as one string, or None when it is something else (token ids, several prompts)."""
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) == 1 and isinstance(self.prompt[0], str):
            return self.prompt[0]
        return None


class ExpertAdd(BaseModel):
    name: str = Field(min_length=1)
    path: str | None = None  # an expert folder to copy into the library; omit to load `name` from the library
    overwrite: bool = False


# -- responses ---------------------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def model_card(model_id: str, owned_by: str, created: int | None = None, **extra) -> dict:
    return {"id": model_id, "object": "model", "created": created or int(time.time()), "owned_by": owned_by, **extra}


def chat_completion(id_: str, model: str, text: str, end: dict, answered_by: dict) -> dict:
    return {"id": id_, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": end["finish_reason"], "logprobs": None}],
            "usage": usage(end["prompt_tokens"], end["completion_tokens"]), **answered_by}


def chat_chunk(id_: str, model: str, created: int, delta: dict, finish_reason: str | None, answered_by: dict,
               usage_: dict | None = None, choices: bool = True) -> dict:
    chunk = {"id": id_, "object": "chat.completion.chunk", "created": created, "model": model,
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
             if choices else [], **answered_by}
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk


def completion(id_: str, model: str, created: int, text: str, finish_reason: str | None, answered_by: dict,
               usage_: dict | None = None, choices: bool = True) -> dict:
    """A Completion, or one streamed chunk of it (same object type in OpenAI's API)."""
    out = {"id": id_, "object": "text_completion", "created": created, "model": model,
           "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}]
           if choices else [], **answered_by}
    if usage_ is not None:
        out["usage"] = usage_
    return out
