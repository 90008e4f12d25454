"""The service against slow and vanishing clients: headers a byte at a time, bodies trickled, clients that hang up.

One uvicorn server on 127.0.0.1 in a thread, with a small queue and short limits, so each case takes seconds.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from conftest import REPO

from geoscope.predict import load_model
from geoscope.serve import ServeSettings, create_app, server, uvicorn_config
from geoscope.serve.server import listen

PHOTO = REPO / "examples" / "images" / "london-uk-1.jpg"
QUEUE = 4
UPLOADS = 3 * QUEUE + 1
GRACE = 2.0
HEADERS = 1.5
CLOCK = 0.01
"""How early a deadline may fire by this process's clock: uvloop's timers run on the loop's millisecond clock."""


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    app = create_app(load_model(), ServeSettings(queue=QUEUE, uploads=UPLOADS, body_timeout=5.0, body_grace=GRACE))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(server, "HEADER_SECONDS", HEADERS)
        uv = uvicorn.Server(uvicorn_config(app, "127.0.0.1", 0))
        sock = listen("127.0.0.1", 0)
        thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not uv.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield sock.getsockname()[1]
        uv.should_exit = True
        thread.join(timeout=30)


def _post(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", "/predict", body=PHOTO.read_bytes(), headers={"Content-Type": "image/jpeg"})
        reply = connection.getresponse()
        json.loads(reply.read())
        return reply.status
    finally:
        connection.close()


def _health(port: int) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/health")
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def _slow_uploads(port: int, count: int, stop: threading.Event) -> None:
    """``count`` clients sending a body a byte every half second, until ``stop``; returns once all are sending."""
    for _ in range(count):
        threading.Thread(target=_trickle, args=(port, b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: "
                                                b"9000\r\n\r\n", 0.5, stop), daemon=True).start()
    deadline = time.monotonic() + 10
    while _health(port)["uploading"] < count and time.monotonic() < deadline:
        time.sleep(0.05)


def _trickle(port: int, head: bytes, pause: float, stop: threading.Event, *, slow_head: bool = False
             ) -> tuple[float, bytes]:
    """Send ``head`` (a byte every ``pause`` seconds with ``slow_head``), then body bytes one every ``pause``
    seconds, until the server replies or closes; the seconds it took and what came back."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.settimeout(pause)
        if not slow_head:
            sock.sendall(head)
        data = iter((head if slow_head else b"") + b"x" * 10_000)
        while not stop.is_set():
            try:
                sock.sendall(bytes([next(data)]))
            except OSError:  # cut
                break
            try:
                reply = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                reply = b""
            rest = b""
            while reply and (chunk := sock.recv(65536)):
                rest += chunk
            return time.monotonic() - start, reply + rest
    return time.monotonic() - start, b""


def test_headers_sent_a_byte_at_a_time_are_cut(port: int) -> None:
    took, reply = _trickle(port, b"GET /health HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"y" * 200, 0.2,
                           threading.Event(), slow_head=True)
    assert reply == b"" and HEADERS - CLOCK <= took < HEADERS + 3


def test_a_trickled_body_gets_408_within_its_time(port: int) -> None:
    took, reply = _trickle(port, b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Length: 5000\r\n\r\n", 0.2,
                           threading.Event())
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and "arrived slower than" in json.loads(body)["error"]
    assert GRACE - CLOCK <= took < GRACE + 3


def test_slow_uploads_take_no_place_in_the_encoding_queue(port: int) -> None:
    stop = threading.Event()
    try:
        _slow_uploads(port, 3 * QUEUE, stop)
        health = _health(port)
        statuses = [_post(port) for _ in range(2 * QUEUE)]
    finally:
        stop.set()
    assert health["uploading"] == 3 * QUEUE and health["in_flight"] == 0
    assert statuses == [200] * (2 * QUEUE)


def test_bodies_beyond_the_upload_limit_are_refused_with_503(port: int) -> None:
    stop = threading.Event()
    try:
        _slow_uploads(port, UPLOADS, stop)
        refused = _post(port)
    finally:
        stop.set()
    assert refused == 503
    deadline = time.monotonic() + 15
    while _health(port)["uploading"] and time.monotonic() < deadline:  # the slow clients are cut or give up
        time.sleep(0.1)
    assert _health(port)["uploading"] == 0 and _post(port) == 200


def test_a_client_that_hangs_up_is_a_log_line_not_a_traceback(port: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Length: 5000\r\n\r\nonly part of it")
        time.sleep(0.3)
    time.sleep(1.0)
    assert any("hung up before its request POST /predict was read" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert _post(port) == 200
