"""`t2 serve`: the OpenAI-compatible server (see transformer_squared.serve)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from .options import (
    add_library_arg,
    add_model_args,
    add_strategy_args,
    nonneg_float,
    port,
    positive_int,
    precision_args,
    strategy_options,
)

SERVE_EXTRA = "t2 serve needs the serve extra: pip install 'transformer-squared[serve]'"
LOOPBACK = ("localhost",)


def register(sub) -> None:
    from ..serve.config import ServeLimits  # no heavy imports: `t2 -h` stays instant

    defaults = ServeLimits()
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server: base model, experts, mixtures and 'auto'",
                       description="Serves /v1/models, /v1/chat/completions, /v1/completions, /v1/experts and "
                                   "/health. Binds 127.0.0.1 unless --host says otherwise.")
    add_model_args(p)
    add_library_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=port, default=8000)
    p.add_argument("--api-key", default=os.environ.get("T2_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 routes (default: $T2_API_KEY, else none)")
    add_strategy_args(p, default="embedding")  # pass 1 of model "auto"
    p.add_argument("--batching", default="auto", choices=["auto", "rows", "groups"],
                   help="mixed-expert batches: per-row z in one pass (rows), one merged batch per expert (groups), "
                        "or pick per batch from costs measured at start-up (auto, default)")
    p.add_argument("--max-batch-size", type=positive_int, default=defaults.max_batch_size)
    p.add_argument("--max-queue", type=positive_int, default=defaults.max_queue, help="queued requests beyond that get 429")
    p.add_argument("--max-prompt-tokens", type=positive_int, default=defaults.max_prompt_tokens)
    p.add_argument("--max-tokens", type=positive_int, default=defaults.max_tokens,
                   help="the most tokens a request may ask for (and the default for chat)")
    p.add_argument("--batch-window-ms", type=nonneg_float, default=defaults.batch_window_s * 1000,
                   help="how long a batch that is not full waits for more requests before it starts")
    p.add_argument("--shutdown-timeout", type=nonneg_float, default=defaults.shutdown_timeout_s,
                   help="seconds in-flight requests get to finish on Ctrl-C before they are cancelled")
    p.add_argument("--max-body-bytes", type=positive_int, default=defaults.max_body_bytes,
                   help="larger request bodies get 413, before they are read (default: %(default)s)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
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
    from ..serve.config import ServeLimits
    from ..svf import load_svf

    limits = ServeLimits(args.max_batch_size, args.max_queue, args.max_prompt_tokens, args.max_tokens,
                         args.batch_window_ms / 1000, args.shutdown_timeout, args.max_body_bytes)
    if not _is_loopback(args.host) and not args.api_key:
        print(f"t2 serve: warning: listening on {args.host} without --api-key: anyone who can reach it can use "
              "the model and add or remove experts", file=sys.stderr)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    svf = load_svf(args.model or "default", targets=args.targets or "mlp", cache_dir=args.cache_dir,
                   **precision_args(args))
    options = {k: v for k, v in strategy_options(args).items() if v is not None}
    app = create_app(svf, args.library, strategy=args.strategy, strategy_options=options, api_key=args.api_key,
                     limits=limits, batching=args.batching)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info",
                            timeout_graceful_shutdown=args.shutdown_timeout)  # seconds, fractions too (0: cancel at once)
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
