"""Serving a model over HTTP: a FastAPI application with micro-batching and a map page.

``create_app`` builds the application, ``serve`` runs it under uvicorn; ``batching``
holds the micro-batcher, ``page`` what the page reads besides predictions.
"""

from __future__ import annotations

from .app import MAX_UPLOAD_BYTES, ServeSettings, create_app
from .server import serve, uvicorn_config

__all__ = ["MAX_UPLOAD_BYTES", "ServeSettings", "create_app", "serve", "uvicorn_config"]
