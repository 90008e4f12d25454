"""Running the application under uvicorn, with the settings a public-facing service needs.

A large listen backlog (so a burst of connections waits instead of being reset), no
``Server`` header, a keep-alive timeout for idle connections, a deadline for each request's
headers, and ``workers`` processes that each load the model (the application is then built
from environment settings). HTTP is parsed by ``httptools`` (llhttp, in C) rather than h11
(pure Python), and the event loop is ``uvloop`` where it is installed (not on Windows).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

from ..distributed import LOCAL_PROCESSES_ENV
from ..errors import GeoscopeError
from ..loading import load_any_model
from .app import ServeSettings, create_app

BACKLOG = 2048
KEEP_ALIVE_SECONDS = 5
HEADER_SECONDS = 10.0
"""A client has this long, from connecting or from its last response, to send a whole request line and headers."""
_ENV = "GEOSCOPE_SERVE_CONFIG"


def uvicorn_config(app: FastAPI | str, host: str = "127.0.0.1", port: int = 8000, *, workers: int = 1,
                   log_level: str = "warning") -> uvicorn.Config:
    """The uvicorn configuration for ``app`` (an application, or an import string with ``workers``)."""
    return uvicorn.Config(
        app, host=host, port=port, workers=workers if isinstance(app, str) else None,
        factory=isinstance(app, str), backlog=BACKLOG, timeout_keep_alive=KEEP_ALIVE_SECONDS,
        server_header=False, date_header=True, log_level=log_level, access_log=False,
        http=HeaderDeadline, loop="auto", lifespan="on",  # auto: uvloop where installed
    )


class HeaderDeadline(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's headers: a client sending them a byte at a
    time (slowloris) is cut after :data:`HEADER_SECONDS` instead of holding its connection for as long as it likes
    (uvicorn's keep-alive timer stops at the first byte)."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(HEADER_SECONDS, self._too_slow)

    def _too_slow(self) -> None:
        waiting = self.cycle is None or self.cycle.response_complete  # no request being answered
        if waiting and not self.transport.is_closing():
            self.transport.close()


def serve(model_dir: str | None = None, host: str = "127.0.0.1", port: int = 8000, *, workers: int = 1,
          settings: ServeSettings | None = None, log_level: str = "warning",
          announce: Callable[[str], None] | None = None) -> None:
    """Serve a model until interrupted; with ``workers`` > 1, that many processes share the socket.

    The bundle is read (and a broken one refused) before the port is opened; ``announce``
    is called with the base URL once the socket listens (port 0 picks a free one).
    """
    settings = settings or ServeSettings()
    if workers > 1:
        # loaded here as each worker will load it: a broken bundle is refused in one line before any worker starts
        # (a worker failing at start-up is restarted, forever); a zero-shot model's prompts are embedded once for all
        load_any_model(model_dir)
        os.environ[_ENV] = json.dumps({"model": model_dir, "settings": dataclasses.asdict(settings)})
        os.environ[LOCAL_PROCESSES_ENV] = str(workers)  # each worker encodes, decodes and answers on its share of cores
        config = uvicorn_config(f"{__name__}:app_from_environment", host, port, workers=workers,
                                log_level=log_level)
    else:
        config = uvicorn_config(create_app(model_dir, settings), host, port, log_level=log_level)
    server = uvicorn.Server(config)
    sock = listen(host, port)
    if announce is not None:
        bound_host, bound_port = sock.getsockname()[:2]
        announce(f"http://{bound_host}:{bound_port}/")
    if workers > 1:
        Multiprocess(config, sockets=[sock]).run()
    else:
        server.run(sockets=[sock])


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` for uvicorn, Nagle's algorithm off for its connections.

    Without ``TCP_NODELAY`` each keep-alive response waits ~40 ms for the client's delayed
    ACK (uvicorn's own socket has protocol number 0, so asyncio does not set the option);
    accepted connections inherit it from this socket.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)  # from now on connections wait in the backlog, even before uvicorn runs
    except OSError as exc:
        sock.close()
        raise GeoscopeError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.set_inheritable(True)  # for worker processes
    return sock


def app_from_environment() -> FastAPI:
    """The application a worker process builds from what :func:`serve` put in the environment."""
    spec = json.loads(os.environ[_ENV])
    return create_app(spec["model"], ServeSettings(**spec["settings"]))
