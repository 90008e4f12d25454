"""Serving at the speed of predict: ``geoscope serve`` under 1 and 8 keep-alive clients beside ``predict``, per runtime.

For every installed runtime (ONNX Runtime fp32, OpenVINO fp32, OpenVINO bf16; ``--runtime`` picks some) one
server (the bundled default model) listens on 127.0.0.1 in a subprocess. Each round, runtime after runtime
(interleaved, so that the other work on a shared machine hits every row alike): ``GeoModel.predict`` on the
folder of 224 px photos with an empty feature cache (predict's images/s), then the server under 1 client and
under 8 clients, each posting the same photos as raw JPEG bodies over its own keep-alive connection, one
request after the other. Prints the medians over the rounds: predict's images/s, the requests/s and
latencies (p50/p99 over every request of the rounds), the server's and the clients' CPU per request, and
the ratio of serve's requests/s with 8 clients to predict's images/s (taken within each round, then the
median). Then, for the first runtime only, the overload phases: 64 clients, and 200 connections at once
(one request each, the queue answering 503 beyond its limit).

The clients send prebuilt requests over plain sockets and read the replies by their ``Content-Length``: on a
small machine they share the cores with the server, so they are kept light (their CPU is printed).
``--baseline-src DIR`` also starts servers from another checkout's ``src`` (e.g. ``../main/src``) and
measures them in the same rounds, for a before/after in one run; ``--variant='--encode-batch 8'`` (repeatable)
does the same for servers started with other options.

    .venv/bin/python benchmarks/serve.py [--rounds 3] [--seconds 5] [--runtime onnxruntime ...]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GEOSCOPE_SHARED_DATA", REPO.parent / "shared" / "data"))
RUNTIMES = ("onnxruntime", "openvino:fp32", "openvino:bf16")


@dataclass
class Phase:
    """One load on one server: requests answered, their latencies, refusals and failures, CPU used."""

    clients: int
    latencies: list[float] = field(default_factory=list)
    busy: int = 0
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0
    server_cpu: float | None = None
    client_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0


@dataclass
class Server:
    """A ``geoscope serve`` subprocess for one runtime (and one source tree)."""

    label: str
    runtime: str
    process: subprocess.Popen
    port: int
    predict: list[float] = field(default_factory=list)
    """predict's images/s, one per round (the same for a baseline server: the library measured is this one)."""
    phases: dict[int, list[Phase]] = field(default_factory=dict)


def photos(count: int) -> list[Path]:
    folder = SHARED / "london-uk" / "images"
    paths = sorted(folder.glob("*.jpg"))[:count] if folder.is_dir() else []
    if not paths:
        print(f"note: {folder} not found; using examples/images", file=sys.stderr)
        paths = sorted((REPO / "examples" / "images").glob("*.jpg"))
    return paths


def start_server(runtime: str, args: argparse.Namespace, src: Path | None = None,
                 extra: Sequence[str] = ()) -> tuple[subprocess.Popen, int]:
    """A server on a free port, started without waiting for its model (see :func:`wait_ready`); ``extra``: serve
    options of a variant, after the common ones."""
    command = [sys.executable, "-c", "import sys; from geoscope.cli.main import main; sys.exit(main())", "serve",
               "--port", "0", "--runtime", runtime, *args.serve_args, *extra]
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    line = server.stdout.readline() if server.stdout else ""
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if not match:
        server.kill()
        sys.exit(f"server ({runtime}) did not start: {line!r}")
    return server, int(match[1])


def wait_ready(port: int, pid: int) -> None:
    """Until the server answers ``/health`` and then sits idle (it draws the page's base map after start-up: seconds
    of CPU that would otherwise land in the first round)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # the port listens before the model has warmed up
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    break
        except OSError:
            pass
        time.sleep(0.2)
    else:
        sys.exit(f"server on port {port} never became healthy")
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        after = cpu_seconds(pid)
        if before is None or after is None or after - before < 0.05:
            return
    sys.exit(f"server on port {port} never settled")


class Connection:
    """One keep-alive HTTP/1.1 connection posting prebuilt requests (reconnects when the server closes it)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None

    def post(self, request: bytes) -> int:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=120)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").lower().split("\r\n")
        headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection mid-reply")
            body += chunk
        if headers.get("connection", "").strip() == "close":
            self.close()
        return int(lines[0].split()[1])

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def requests_for(paths: list[Path]) -> list[bytes]:
    out = []
    for path in paths:
        body = path.read_bytes()
        out.append(b"POST /predict?top_k=5 HTTP/1.1\r\nHost: bench\r\nContent-Type: image/jpeg\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process and its live child processes so far (a server's ``--workers``), from
    /proc (None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = {int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                    for c in (task / "children").read_text().split()}
    except (OSError, ValueError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") + sum(
        cpu_seconds(child) or 0.0 for child in children)


def run_phase(port: int, clients: int, seconds: float, requests: list[bytes], *, pid: int | None = None,
              burst: bool = False, offset: int = 0) -> Phase:
    """``clients`` threads, each on its own connection, posting one request after the other for ``seconds``
    (``burst``: one request each, all connected first)."""
    phase = Phase(clients)
    lock = threading.Lock()
    gate = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(k: int) -> None:
        connection = Connection(port)
        i = offset + k * 37
        try:
            if burst:
                connection.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        except OSError as exc:
            with lock:
                phase.errors.append(f"{type(exc).__name__}: {exc}")
        gate.wait()
        while True:
            t, error = time.perf_counter(), ""
            try:
                status = connection.post(requests[i % len(requests)])
            except OSError as exc:
                status, error = 0, f"{type(exc).__name__}: {exc}"
                connection.close()
            took = time.perf_counter() - t
            i += 1
            with lock:
                if status == 200:
                    phase.latencies.append(took)
                elif status == 503:
                    phase.busy += 1
                else:
                    phase.errors.append(error if status == 0 else f"HTTP {status}")
            if burst or time.perf_counter() >= stop_at[0]:
                break
        connection.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for thread in threads:
        thread.start()
    cpu0 = cpu_seconds(pid) if pid else None
    own0 = time.process_time()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    gate.wait()
    for thread in threads:
        thread.join(timeout=seconds + 180)
    phase.wall = time.perf_counter() - t0
    phase.client_cpu = time.process_time() - own0
    cpu1 = cpu_seconds(pid) if pid else None
    phase.server_cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    return phase


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


def percentiles(phases: list[Phase]) -> tuple[float, float]:
    lat = np.array([x for p in phases for x in p.latencies]) * 1000
    return (float(np.percentile(lat, 50)), float(np.percentile(lat, 99))) if len(lat) else (float("nan"),) * 2


def per_request_ms(phases: list[Phase], what: str) -> str:
    done = sum(len(p.latencies) + p.busy for p in phases)
    cpu = [getattr(p, what) for p in phases]
    return f"{1000 * sum(cpu) / done:.1f}" if done and None not in cpu else "–"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each timed serve phase (5)")
    parser.add_argument("--images", type=int, default=300, help="224 px London photos predicted and posted (300)")
    parser.add_argument("--runtime", action="append", choices=RUNTIMES,
                        help="runtimes to measure (repeatable; default: every installed one)")
    parser.add_argument("--baseline-src", type=Path, metavar="DIR",
                        help="also measure servers importing geoscope from DIR (another checkout's src), same rounds")
    parser.add_argument("--variant", action="append", default=[], metavar="'OPTIONS'",
                        help="also measure servers started with these serve options, same rounds (repeatable; "
                             "e.g. --variant='--encode-batch 8')")
    parser.add_argument("--no-overload", action="store_true", help="skip the 64-client and 200-at-once phases")
    args, args.serve_args = parser.parse_known_args()  # the rest goes to `geoscope serve` (--max-batch 8 ...)
    from geoscope.encoders.runtime import openvino_installed, resolve_runtime

    runtimes = args.runtime or [r for r in RUNTIMES if openvino_installed() or not r.startswith("openvino")]
    paths = photos(args.images)
    requests = requests_for(paths)
    with tempfile.TemporaryDirectory(prefix="geoscope-bench-serve-") as tmp:
        # predict starts from an empty feature cache each round; the exported and compiled encoders are reused
        cache = Path(tmp) / "cache"
        cache.mkdir()
        home = Path(os.environ.get("GEOSCOPE_CACHE") or Path.home() / ".cache" / "geoscope").expanduser()
        for part in ("onnx", "openvino"):
            if (home / part).is_dir():
                (cache / part).symlink_to(home / part)
        os.environ["GEOSCOPE_CACHE"] = str(cache)
        servers: list[Server] = []
        try:
            for runtime in runtimes:
                servers.append(Server(runtime, runtime, *start_server(runtime, args)))
                if args.baseline_src:
                    servers.append(Server(f"{runtime} (baseline)", runtime,
                                          *start_server(runtime, args, args.baseline_src.resolve())))
                for variant in args.variant:
                    servers.append(Server(f"{runtime} ({variant})", runtime,
                                          *start_server(runtime, args, extra=shlex.split(variant))))
            for server in servers:
                wait_ready(server.port, server.process.pid)
            measure(servers, runtimes, paths, requests, args, cache)
            overload = None
            if not args.no_overload:
                first = servers[0]
                overload = [run_phase(first.port, 64, args.seconds, requests, pid=first.process.pid),
                            run_phase(first.port, 200, 0.0, requests, pid=first.process.pid, burst=True)]
        finally:
            for server in servers:
                stop(server.process)
    report(servers, args, len(paths), resolve_runtime("auto"), overload)
    return 0


def measure(servers: list[Server], runtimes: list[str], paths: list[Path], requests: list[bytes],
            args: argparse.Namespace, cache: Path) -> None:
    """The interleaved rounds: per runtime, predict on the folder, then each of its servers under 1 and 8 clients."""
    from geoscope.encoders.runtime import resolve_runtime
    from geoscope.predict import load_model

    models = {}
    for runtime in runtimes:
        model = load_model()
        model.runtime = resolve_runtime(runtime)
        model.predict(paths[:16], top_k=5)  # the encoder loaded and compiled before the clock
        models[runtime] = model
    for server in servers:  # warm-up: the first requests load what each server loads lazily
        run_phase(server.port, 4, 1.5, requests)
    for round_ in range(args.rounds):
        for runtime in runtimes:
            shutil.rmtree(cache / "features", ignore_errors=True)
            start = time.perf_counter()
            models[runtime].predict(paths, top_k=5)
            rate = len(paths) / (time.perf_counter() - start)
            for server in servers:
                if server.runtime != runtime:
                    continue
                server.predict.append(rate)
                for clients in (1, 8):
                    phase = run_phase(server.port, clients, args.seconds, requests, pid=server.process.pid,
                                      offset=round_ * 101)
                    server.phases.setdefault(clients, []).append(phase)
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)


def report(servers: list[Server], args: argparse.Namespace, count: int, auto: object,
           overload: list[Phase] | None) -> None:
    print(f"geoscope serve vs predict, default model, {count} London photos of 224 px, {os.cpu_count()} CPUs, "
          f"{args.rounds} interleaved rounds of {args.seconds:g} s per load; `auto` is {auto}; "
          f"serve options: {' '.join(args.serve_args) or 'defaults'}\n")
    print("| runtime | predict images/s | 1 client req/s | p50 ms | p99 ms | 8 clients req/s | p50 ms | p99 ms "
          "| 8 clients / predict | server CPU ms/req (8) | client CPU ms/req (8) | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for server in servers:
        one, eight = server.phases.get(1, []), server.phases.get(8, [])
        ratios = [p.rate / r for p, r in zip(eight, server.predict, strict=True) if r]
        errors = sum(len(p.errors) for p in one + eight)
        print(f"| {server.label} | {np.median(server.predict):.1f} | {np.median([p.rate for p in one]):.1f} "
              f"| {percentiles(one)[0]:.0f} | {percentiles(one)[1]:.0f} | {np.median([p.rate for p in eight]):.1f} "
              f"| {percentiles(eight)[0]:.0f} | {percentiles(eight)[1]:.0f} "
              f"| {np.median(ratios):.2f} ({', '.join(f'{r:.2f}' for r in ratios)}) "
              f"| {per_request_ms(eight, 'server_cpu')} | {per_request_ms(eight, 'client_cpu')} | {errors} |")
    for error in sorted({e for s in servers for ps in s.phases.values() for p in ps for e in p.errors})[:5]:
        print(f"  error: {error}")
    if overload:
        many, burst = overload
        p50, p99 = percentiles([many])
        print(f"\n{servers[0].label}, 64 clients: {many.rate:.1f} requests/s, p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
              f"{many.busy} answered 503, {len(many.errors)} failed")
        print(f"{servers[0].label}, 200 connections at once, one request each: {len(burst.latencies)} answered 200, "
              f"{burst.busy} answered 503, {len(burst.errors)} dropped or failed")


if __name__ == "__main__":
    sys.exit(main())
