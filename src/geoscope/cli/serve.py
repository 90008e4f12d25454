"""``geoscope serve``: an HTTP API and web page for a model."""

from __future__ import annotations

import argparse

from ..predict import load_model
from ..serve import make_server


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="serve a model over HTTP (POST /predict, page at /)")
    parser.add_argument("--model", help="model bundle directory (default: the bundled model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    model.encoder, model.adapter  # load both before the first request  # noqa: B018
    server = make_server(model, args.host, args.port)
    host, port = server.server_address[:2]
    print(f"geoscope serving {model.config.get('name')} on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
