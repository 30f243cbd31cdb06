"""The HTTP front end: an OpenAI-compatible FastAPI app over the engine.

    GET    /                        the playground page (serve/playground.py; no API key needed for the page)
    GET    /health                  liveness, queue depth, batching costs (no API key needed)
    GET    /v1/experts              expert statistics: delta similarity, norms per layer, usage, records
    GET    /v1/models[/{id}]        the base model, every expert of the library, and "auto"
    POST   /v1/chat/completions     chat template applied; stream=True gives server-sent events
    POST   /v1/completions          raw text prompt
    POST   /v1/experts              {"name", "path"?, "overwrite"?}: add an expert while serving
    DELETE /v1/experts/{name}       remove it from the library

`model` picks the weights: the base model's id (or "base"), an expert's name, "auto" (two-pass self-adaptation
with the strategy chosen at start-up), or, with a "mixture" body field, a mixture of experts: weights finite, in
[MIXTURE_MIN, MIXTURE_MAX] (the α box CEM searches by default) and not all 0. With an API key set, every /v1 route
needs `Authorization: Bearer KEY` (401 otherwise). Errors use OpenAI's format; malformed JSON is 400, a body that
does not match the schema 422, an unknown model or expert 404, a body over --max-body-bytes 413, a full queue 429,
shutting down 503.

One client must not stall the others, so the event loop only routes: bodies over the limit are refused before
they are read (body_limit.py); a prompt with more characters than `max_prompt_tokens` tokens could hold (the
longest vocabulary entry times the limit), or more messages than that many tokens (a chat template spends at least
one token per message), is refused before the chat template or the tokenizer sees it; the
template, tokenization and expert look-ups (which may read the library from disk) run in a worker thread; the
engine's own thread does all the model work.

create_app wires small pieces together — error handlers, auth, the model routes, the completion routes — around
one `Serving` object they share, so a route is added with one more `add_*_routes(app, serving)` function.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import math
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

try:
    from jinja2 import TemplateError  # what chat templates raise
except ImportError:  # pragma: no cover - transformers' chat templates need jinja2
    TemplateError = ValueError

from ..adapt.config import CEMConfig
from ..experts import ExpertError, ExpertLibrary
from ..generation import chat_text
from . import playground, schemas
from .body_limit import BodyLimit
from .config import ServeLimits
from .engine import Busy, Closed, Engine
from .registry import ExpertRegistry, UnknownExpert
from .request import Request as Job

MIXTURE_MIN, MIXTURE_MAX = CEMConfig.alpha_min, CEMConfig.alpha_max
CHARS_PER_TOKEN_FALLBACK = 64  # for a tokenizer without a vocabulary to measure


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def response(self) -> JSONResponse:
        return JSONResponse(schemas.error_body(self.message, self.type, self.param, self.code), status_code=self.status)


def _error_type(status: int) -> str:
    return {401: "authentication_error", 429: "rate_limit_error"}.get(status, "server_error" if status >= 500
                                                                     else "invalid_request_error")


def _strategy_builder(strategy, svf, library, options: dict):
    """None, a Strategy (used as is), or a name for adapt.build_strategy (rebuilt when the experts change)."""
    if strategy is None or not isinstance(strategy, str):
        return strategy

    def build():
        try:
            from ..adapt import build_strategy
        except ImportError as e:
            raise RuntimeError(f"strategy {strategy!r} needs transformer_squared.adapt.build_strategy ({e})") from None
        return build_strategy(strategy, svf, library, **options)

    return build


def _longest_token(tokenizer) -> int:
    """Characters of the longest vocabulary entry: no token of the prompt covers more characters than that."""
    try:
        return max(1, max(map(len, tokenizer.get_vocab())))
    except (AttributeError, TypeError, ValueError):
        return CHARS_PER_TOKEN_FALLBACK


@dataclass
class Serving:
    """What the routes share: the model, the engine, the experts, the limits, and the handlers' tokenizer."""

    svf: object
    engine: Engine
    registry: ExpertRegistry
    limits: ServeLimits
    strategy_name: str | None
    usage: object = None  # experts/memory.py UsageCounter: which expert answered, counted into the expert memory
    tokenizer: object = None  # a copy for the handlers' worker threads (the engine has its own), under `lock`
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self):
        self.tokenizer = copy.deepcopy(self.svf.tokenizer)
        self.base_ids = {self.svf.model_id, "base"}
        self.context = getattr(self.svf.model.config, "max_position_embeddings", None) or 1 << 30
        self.max_chars = self.limits.max_prompt_tokens * _longest_token(self.tokenizer)

    # -- validation (cheap ones on the event loop, the rest in a worker thread) ---------------------------------
    def check_characters(self, chars: int, param: str) -> None:
        """Refuse, before any tokenizing, a prompt too long to fit in max_prompt_tokens tokens."""
        if chars > self.max_chars:
            raise APIError(400, f"the prompt has {chars} characters, more than {self.limits.max_prompt_tokens} "
                                f"tokens (--max-prompt-tokens) can hold ({self.max_chars})", param,
                           "context_length_exceeded")

    def chat_ids(self, messages: list[dict]) -> list[int]:
        with self.lock:
            try:
                text = chat_text(self.tokenizer, messages)
            except (ValueError, TemplateError) as e:  # the chat template refuses these messages (e.g. role order)
                raise APIError(400, f"the model's chat template refused the messages: {e}", "messages",
                               "invalid_value") from None
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def text_ids(self, text: str) -> list[int]:
        with self.lock:
            return self.tokenizer(text)["input_ids"]

    def mixture(self, weights: dict[str, float]):
        if not weights:
            raise APIError(400, "mixture needs at least one expert: {\"name\": weight, ...}", "mixture",
                           "invalid_value")
        for name, w in weights.items():
            if not (math.isfinite(w) and MIXTURE_MIN <= w <= MIXTURE_MAX):
                raise APIError(400, f"mixture weight of {name!r} is {w}; each weight must be a finite number in "
                                    f"[{MIXTURE_MIN:g}, {MIXTURE_MAX:g}] (the range CEM searches)", "mixture",
                               "invalid_value")
        if not any(w > 0 for w in weights.values()):
            raise APIError(400, "mixture weights are all 0, which would scale every singular value to 0; "
                                "give at least one expert a positive weight", "mixture", "invalid_value")
        unknown = [n for n in weights if n not in self.registry.experts]
        if unknown:
            self.registry.rescan()
            known = self.registry.names()
            unknown = [n for n in unknown if n not in known and n not in self.registry.rejected]
            if unknown:
                raise APIError(404, f"unknown expert {unknown[0]!r} in mixture; available experts: "
                                    f"{', '.join(known) or 'none'}", "mixture", "expert_not_found")
        return self.registry.mixture(weights)

    def job(self, body: schemas.Sampling, ids: list[int], prompt, default_max: int) -> Job:
        """A validated engine request (runs in a worker thread: expert look-ups may read the library)."""
        limits = self.limits
        problem = body.unsupported()
        if problem:
            raise APIError(400, problem[1], problem[0], "unsupported_parameter")
        auto, expert = False, None
        if body.mixture is not None:
            if body.model not in self.base_ids | {"mixture"}:
                raise APIError(400, "a request with \"mixture\" must set model to 'mixture' (or the base model)",
                               "model", "invalid_value")
            expert = self.mixture(body.mixture)
        elif body.model == "auto":
            if self.engine.auto_status() is not None:
                raise APIError(400, f"model 'auto' is unavailable: {self.engine.auto_status()}", "model",
                               "auto_unavailable")
            auto = True
        elif body.model not in self.base_ids:
            expert = self.registry.get(body.model)
        if not ids:
            raise APIError(400, "the prompt is empty", "prompt", "invalid_value")
        if len(ids) > limits.max_prompt_tokens:
            raise APIError(400, f"the prompt has {len(ids)} tokens; this server accepts at most "
                                f"{limits.max_prompt_tokens} (--max-prompt-tokens)", "messages",
                           "context_length_exceeded")
        max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens
        if max_tokens is not None and max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens is {max_tokens}; this server allows at most {limits.max_tokens} "
                                "(--max-tokens)", "max_tokens", "invalid_value")
        room = self.context - len(ids)
        max_tokens = max_tokens or min(default_max, room)
        if max_tokens > room:
            raise APIError(400, f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                                f"context of {self.context} tokens", "max_tokens", "context_length_exceeded")
        return Job(ids, max_tokens, prompt, auto, expert, body.temperature or 0.0,
                   1.0 if body.top_p is None else body.top_p, body.seed, body.stop or [])

    def cards(self) -> list[dict]:
        registry, started = self.registry, self.started
        registry.rescan()
        out = [schemas.model_card(self.svf.model_id, "transformer-squared", started, t2_kind="base")]
        for name in registry.names():
            meta = registry.experts[name].meta
            out.append(schemas.model_card(name, "t2-expert", started, t2_kind="expert", domain=meta.domain,
                                          description=meta.description, parametrization=meta.parametrization))
        out.append(schemas.model_card("auto", "transformer-squared", started, t2_kind="auto",
                                      strategy=self.strategy_name, available=self.engine.auto_status() is None,
                                      reason=self.engine.auto_status()))
        return out


def create_app(svf, library: ExpertLibrary | str | None = None, *, strategy=None, strategy_options: dict | None = None,
               api_key: str | None = None, limits: ServeLimits | None = None, batching: str = "auto",
               costs=None) -> FastAPI:
    """An app serving `svf` with the experts of `library`. The engine starts with the app (lifespan)."""
    limits = limits or ServeLimits()
    library = library if isinstance(library, ExpertLibrary) else ExpertLibrary(library)
    registry = ExpertRegistry(svf, library)
    engine = Engine(svf, registry, _strategy_builder(strategy, svf, library, strategy_options or {}),
                    limits.max_batch_size, limits.max_queue, batching, costs, limits.batch_window_s)
    usage = playground.usage_counter(library)
    serving = Serving(svf, engine, registry, limits, strategy if isinstance(strategy, str) else
                      getattr(strategy, "name", None), usage)

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        await asyncio.to_thread(engine.ready.wait)
        yield
        await asyncio.to_thread(engine.close, True, limits.shutdown_timeout_s)
        usage.flush()

    app = FastAPI(title="t2 serve", lifespan=lifespan)
    app.state.engine, app.state.registry, app.state.serving = engine, registry, serving
    add_error_handlers(app)
    add_auth(app, api_key)
    add_model_routes(app, serving)
    add_completion_routes(app, serving)
    playground.install(app, library, usage)  # GET / (the playground page) and GET /v1/experts (statistics)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)  # added last: the outermost, before any read
    return app


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return e.response()

    @app.exception_handler(UnknownExpert)
    async def _unknown(request, e: UnknownExpert):
        return APIError(404, str(e), "model", "model_not_found").response()

    @app.exception_handler(ExpertError)
    async def _expert_error(request, e: ExpertError):
        return APIError(400, str(e), None, "invalid_expert").response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        errors = e.errors()
        if any(err.get("type") == "json_invalid" for err in errors):
            return APIError(400, "could not parse the request body as JSON", None, "invalid_json").response()
        err = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        if tuple(err.get("loc", ())) == ("body",):
            return APIError(400, "the request body must be a JSON object", None, "invalid_json").response()
        param = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or None
        return APIError(422, f"{param or 'body'}: {err['msg']}", param, "invalid_value").response()

    @app.exception_handler(Exception)
    async def _bug(request, e: Exception):
        return APIError(500, f"internal error: {type(e).__name__}: {e}", None, "internal_error", "server_error").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        detail = str(e.detail)
        if e.status_code == 400 and detail == "There was an error parsing the body":  # e.g. not UTF-8
            detail = "could not parse the request body as JSON (it must be UTF-8 JSON text)"
        code = {413: "body_too_large"}.get(e.status_code)
        return APIError(e.status_code, detail, None, code, _error_type(e.status_code)).response()


def add_auth(app: FastAPI, api_key: str | None) -> None:
    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return APIError(401, "invalid or missing API key (send Authorization: Bearer KEY)", None,
                                "invalid_api_key", "authentication_error").response()
        return await call_next(request)


def add_model_routes(app: FastAPI, serving: Serving) -> None:
    engine, registry, svf = serving.engine, serving.registry, serving.svf

    @app.get("/health")
    def health():
        return {"status": "shutting_down" if engine.status()["closing"] else "ok", "model": svf.model_id,
                "experts": registry.names(), "rejected": registry.rejected, **engine.status()}

    @app.get("/v1/models")
    def list_models():
        return {"object": "list", "data": serving.cards()}

    @app.get("/v1/models/{model_id:path}")
    def get_model(model_id: str):
        cards = serving.cards()
        for card in cards:
            if card["id"] == model_id:
                return card
        raise UnknownExpert(model_id, [c["id"] for c in cards])

    @app.post("/v1/experts", status_code=201)
    def add_expert(body: schemas.ExpertAdd):
        expert = registry.add(body.name, body.path, body.overwrite)
        return schemas.model_card(expert.name, "t2-expert", int(time.time()), t2_kind="expert",
                                  domain=expert.meta.domain, description=expert.meta.description)

    @app.delete("/v1/experts/{name}")
    def delete_expert(name: str):
        registry.remove(name)
        return {"id": name, "object": "model", "deleted": True}


async def _run(engine: Engine, j: Job) -> dict:
    """Queue the job; returns the first event's info ('start': what answers it), or raises APIError."""
    j.bind()
    try:
        engine.submit(j)
    except Busy as e:
        raise APIError(429, str(e), None, "queue_full", "rate_limit_error") from None
    except Closed as e:
        raise APIError(503, str(e), None, "shutting_down", "server_error") from None
    try:
        event = await j.events.get()
    except asyncio.CancelledError:
        j.cancelled = True  # the client went away while queued
        raise
    if event.kind == "error":
        raise APIError(event.status, event.message, None, event.code, _error_type(event.status))
    return event.info


async def _collect(j: Job) -> tuple[str, dict]:
    parts = []
    try:
        while True:
            event = await j.events.get()
            if event.kind == "delta":
                parts.append(event.text)
            elif event.kind == "end":
                return "".join(parts), event.info
            else:
                raise APIError(event.status, event.message, None, event.code, _error_type(event.status))
    except asyncio.CancelledError:
        j.cancelled = True
        raise


def _sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def _stream(j: Job, chunk, include_usage: bool):
    """`chunk(text_or_delta, finish_reason, usage=None, choices=True)` builds one event's object."""
    done = False
    try:
        first = chunk(None, None)  # chat opens with the assistant role; completions have no opening chunk
        if first is not None:
            yield _sse(first)
        while True:
            event = await j.events.get()
            if event.kind == "delta":
                yield _sse(chunk(event.text, None))
            elif event.kind == "end":
                end = event.info
                yield _sse(chunk("", end["finish_reason"]))
                if include_usage:
                    yield _sse(chunk("", None, schemas.usage(end["prompt_tokens"], end["completion_tokens"]), False))
                break
            else:
                yield _sse(schemas.error_body(event.message, _error_type(event.status), None, event.code))
                break
        done = True
        yield "data: [DONE]\n\n"
    finally:
        if not done:
            j.cancelled = True  # the client went away: free the row


def _include_usage(body) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def add_completion_routes(app: FastAPI, serving: Serving) -> None:
    engine, limits = serving.engine, serving.limits

    def chat_job(body: schemas.ChatRequest, messages: list[dict]) -> Job:
        return serving.job(body, serving.chat_ids(messages), messages, limits.max_tokens)

    def text_job(body: schemas.CompletionRequest, text: str) -> Job:
        return serving.job(body, serving.text_ids(text), text, limits.max_tokens)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: schemas.ChatRequest):
        messages = [m.as_template_message() for m in body.messages]
        if len(messages) > limits.max_prompt_tokens:  # see the module docstring
            raise APIError(400, f"{len(messages)} messages cannot fit in {limits.max_prompt_tokens} tokens "
                                "(--max-prompt-tokens)", "messages", "context_length_exceeded")
        serving.check_characters(sum(len(m["content"]) for m in messages), "messages")
        j = await asyncio.to_thread(chat_job, body, messages)
        answered_by = await _run(engine, j)
        serving.usage.count(answered_by["expert"])
        id_ = schemas.new_id("chatcmpl")
        if not body.stream:
            text, end = await _collect(j)
            return schemas.chat_completion(id_, body.model, text, end, answered_by)
        created = int(time.time())

        def chunk(text, finish, usage=None, choices=True):
            delta = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
            return schemas.chat_chunk(id_, body.model, created, delta, finish, answered_by, usage, choices)

        return StreamingResponse(_stream(j, chunk, _include_usage(body)), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(body: schemas.CompletionRequest):
        text = body.text()
        if text is None:
            raise APIError(400, "prompt must be one string (token ids and several prompts are not supported)",
                           "prompt", "unsupported_parameter")
        serving.check_characters(len(text), "prompt")
        j = await asyncio.to_thread(text_job, body, text)
        answered_by = await _run(engine, j)
        serving.usage.count(answered_by["expert"])
        id_, created = schemas.new_id("cmpl"), int(time.time())
        if not body.stream:
            out, end = await _collect(j)
            return schemas.completion(id_, body.model, created, out, end["finish_reason"], answered_by,
                                      schemas.usage(end["prompt_tokens"], end["completion_tokens"]))

        def chunk(delta, finish, usage=None, choices=True):
            if delta is None:
                return None
            return schemas.completion(id_, body.model, created, delta or "", finish, answered_by, usage, choices)

        return StreamingResponse(_stream(j, chunk, _include_usage(body)), media_type="text/event-stream")
