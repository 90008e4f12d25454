"""``geoscope serve``: an HTTP API and a map page for a model."""

from __future__ import annotations

import argparse
import contextlib

from ..errors import GeoscopeError
from .options import add_runtime_option


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="serve a model over HTTP (POST /predict, map page at /)")
    parser.add_argument("--model", help="model bundle directory (default: the bundled model), or a CLIP checkpoint "
                        "used zero-shot over the world's places: hf:<repo> or a local folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (8000; 0 picks a free one)")
    parser.add_argument("--workers", type=int, default=1, help="processes, each with its own model (1)")
    parser.add_argument("--max-batch", type=int, default=16,
                        help="most images in one micro-batch, encoded and answered together (16)")
    parser.add_argument("--encode-batch", type=int, default=8, help="most images per run of the encoder (8)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="longest a batch waits for requests still being decoded (5)")
    parser.add_argument("--queue", type=int, default=64,
                        help="most requests in flight; more are answered 503 with Retry-After (64)")
    parser.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    add_runtime_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..serve import ServeSettings, serve

    if min(args.workers, args.max_batch, args.encode_batch, args.queue) < 1 or args.max_wait_ms < 0:
        raise GeoscopeError("--workers, --max-batch, --encode-batch and --queue must be at least 1, "
                            "--max-wait-ms at least 0")
    if not 0 <= args.port <= 65535:
        raise GeoscopeError(f"--port must be in 0..65535, not {args.port}")
    settings = ServeSettings(max_batch=args.max_batch, encode_batch=args.encode_batch, max_wait_ms=args.max_wait_ms,
                             queue=args.queue)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn has shut down cleanly and passes Ctrl-C on
        serve(args.model, args.host, args.port, workers=args.workers, settings=settings, log_level=args.log_level,
              announce=lambda url: print(f"geoscope serving on {url} (Ctrl-C to stop)", flush=True))
    return 0
