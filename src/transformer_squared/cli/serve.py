"""`t2 serve`: the OpenAI-compatible server (see transformer_squared.serve)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from dataclasses import dataclass

from ..serve.config import ServeLimits
from .options import (
    LibraryOptions,
    ModelOptions,
    StrategyOptions,
    add_dataclass_args,
    config_from_args,
    model_for,
    nonneg_float,
    option,
    port,
    positive_int,
    precision_args,
    strategy_option,
    strategy_options,
)

SERVE_EXTRA = "t2 serve needs the serve extra: pip install 'transformer-squared[serve]'"
LOOPBACK = ("localhost",)


def _limit(name: str, parse, default=None):
    """A flag for one ServeLimits field: its default and help come from there."""
    f = ServeLimits.__dataclass_fields__[name]
    return option(f.default if default is None else default, f.metadata["help"], parse=parse)


@dataclass
class ServeConfig(StrategyOptions, LibraryOptions, ModelOptions):
    """`t2 serve`: the model and library served, where, and the server's limits (ServeLimits, in flag units)."""

    strategy: str | None = strategy_option("embedding")  # pass 1 of model "auto"
    host: str = option("127.0.0.1", "address to bind (default: loopback only)")
    port: int = option(8000, "TCP port to listen on", parse=port)
    api_key: str | None = option(None, "require 'Authorization: Bearer KEY' on /v1 routes (default: $T2_API_KEY, "
                                       "else none)")
    batching: str = option("auto", "mixed-expert batches: per-row z in one pass (rows), one merged batch per expert "
                                   "(groups), or pick per batch from costs measured at start-up (auto)",
                           choices=("auto", "rows", "groups"))
    max_batch_size: int = _limit("max_batch_size", positive_int)
    max_queue: int = _limit("max_queue", positive_int)
    max_prompt_tokens: int = _limit("max_prompt_tokens", positive_int)
    max_tokens: int = _limit("max_tokens", positive_int)
    batch_window_ms: float = option(ServeLimits.batch_window_s * 1000, "milliseconds a batch that is not full waits "
                                    "for more requests before it starts", parse=nonneg_float)
    shutdown_timeout: float = option(ServeLimits.shutdown_timeout_s, "seconds in-flight requests get to finish on "
                                     "Ctrl-C before they are cancelled", parse=nonneg_float)
    max_body_bytes: int = _limit("max_body_bytes", positive_int)
    threads: int | None = option(None, "torch threads (default: torch's choice)", parse=positive_int)
    prepack: bool = option(False, "CPU: run linear layers on oneDNN-prepacked weights (faster small-batch decoding; "
                                  "one extra copy of the weights, packed again after each expert switch)")

    def limits(self) -> ServeLimits:
        return ServeLimits(self.max_batch_size, self.max_queue, self.max_prompt_tokens, self.max_tokens,
                           self.batch_window_ms / 1000, self.shutdown_timeout, self.max_body_bytes)


def register(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server: base model, experts, mixtures and 'auto'",
                       description="Serves /v1/models, /v1/chat/completions, /v1/completions, /v1/experts and "
                                   "/health. Binds 127.0.0.1 unless --host says otherwise.")
    add_dataclass_args(p, ServeConfig, defaults={"api_key": os.environ.get("T2_API_KEY")})
    p.set_defaults(func=serve_cmd)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in LOOPBACK


def serve_cmd(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        print(SERVE_EXTRA, file=sys.stderr)
        return 2
    from ..serve.app import create_app
    from ..svf import load_svf

    cfg = config_from_args(args, ServeConfig)
    limits = cfg.limits()
    if not _is_loopback(cfg.host) and not cfg.api_key:
        print(f"t2 serve: warning: listening on {cfg.host} without --api-key: anyone who can reach it can use "
              "the model and add or remove experts", file=sys.stderr)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    svf = load_svf(model_for(cfg.model), targets=cfg.targets or "mlp", cache_dir=cfg.cache_dir,
                   **precision_args(cfg))
    options = {k: v for k, v in strategy_options(cfg).items() if v is not None}
    app = create_app(svf, cfg.library, strategy=cfg.strategy, strategy_options=options, api_key=cfg.api_key,
                     limits=limits, batching=cfg.batching)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="info",
                            timeout_graceful_shutdown=cfg.shutdown_timeout)  # seconds, fractions too (0: cancel at once)
    from ..decoding import prepacked

    with prepacked(svf.model, cfg.prepack):
        _graceful_server(uvicorn, config).run()
    return 0


def _graceful_server(uvicorn, config):
    """uvicorn's server, but Ctrl-C / SIGTERM only trigger its graceful shutdown: uvicorn re-raises the signal once
    shut down, which cancels the app's lifespan task and logs a CancelledError traceback on every clean stop."""
    import contextlib
    import signal

    class GracefulServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    return GracefulServer(config)
