"""Load on ``geoscope serve``: requests/s and latency for 1, 8 and 64 clients, and 200 at once.

Starts the server (bundled default model) on 127.0.0.1 on a free port in a subprocess, posts
real photos from ``../shared/data/london-uk`` (else ``examples/images``) as raw bodies from
threads over keep-alive connections, and prints a table; stops by itself (each phase lasts
``--seconds``; the burst is one request per connection).

    .venv/bin/python benchmarks/serve.py [--seconds 6] [--max-batch 16] [--max-wait-ms 5]
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GEOSCOPE_SHARED_DATA", REPO.parent / "shared" / "data"))
MAX_IMAGES = 300


@dataclass
class Phase:
    name: str
    clients: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    busy: int = 0
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0
    server_cpu: float | None = None
    """CPU seconds the server process spent in this phase (Linux only)."""

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0

    def row(self) -> str:
        lat = np.array(self.latencies) * 1000
        p50, p99 = (np.percentile(lat, 50), np.percentile(lat, 99)) if len(lat) else (float("nan"),) * 2
        answered = len(self.latencies) + self.busy
        cpu = f"{1000 * self.server_cpu / answered:.0f}" if self.server_cpu is not None and answered else "–"
        return (f"| {self.name} | {len(self.latencies)} | {self.rate:.1f} | {p50:.0f} | {p99:.0f} | {self.busy} "
                f"| {len(self.errors)} | {cpu} |")


def images() -> list[bytes]:
    folder = SHARED / "london-uk" / "images"
    if folder.is_dir():
        paths = sorted(folder.glob("*.jpg"))[:MAX_IMAGES]
    else:
        print(f"note: {folder} not found; using examples/images", file=sys.stderr)
        paths = sorted((REPO / "examples" / "images").glob("*.jpg"))
    if not paths:
        sys.exit("no images to send")
    return [p.read_bytes() for p in paths]


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen | None, int]:
    command = [sys.executable, "-c", "import sys; from geoscope.cli.main import main; sys.exit(main())", "serve",
               "--port", "0", "--max-batch", str(args.max_batch), "--encode-batch", str(args.encode_batch),
               "--max-wait-ms", str(args.max_wait_ms),
               "--queue", str(args.queue)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline() if server.stdout else ""
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if not match:
        server.kill()
        sys.exit(f"server did not start: {line!r}")
    port = int(match[1])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the port listens before the model has warmed up
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return server, port
        except OSError:
            time.sleep(0.2)
    server.kill()
    sys.exit("server never became healthy")


def post(connection: http.client.HTTPConnection, body: bytes) -> int:
    connection.request("POST", "/predict?top_k=5", body=body, headers={"Content-Type": "image/jpeg"})
    reply = connection.getresponse()
    reply.read()
    if reply.getheader("connection", "").lower() == "close":
        connection.close()
    return reply.status


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process so far, from /proc (None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def run_phase(port: int, phase: Phase, bodies: list[bytes], *, burst: bool = False, pid: int | None = None) -> Phase:
    counter = itertools.count()
    lock = threading.Lock()
    start_gate = threading.Barrier(phase.clients + 1)
    stop_at = [0.0]

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        start_gate.wait()
        while True:
            body = bodies[next(counter) % len(bodies)]
            t, error = time.perf_counter(), ""
            try:
                status = post(connection, body)
            except OSError as exc:
                status, error = 0, f"{type(exc).__name__}: {exc}"
                connection.close()
            took = time.perf_counter() - t
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

    threads = [threading.Thread(target=client, daemon=True) for _ in range(phase.clients)]
    for thread in threads:
        thread.start()
    cpu0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    stop_at[0] = t0 + phase.seconds
    start_gate.wait()
    for thread in threads:
        thread.join(timeout=phase.seconds + 120)
    phase.wall = time.perf_counter() - t0
    cpu1 = cpu_seconds(pid)
    phase.server_cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    return phase


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each timed phase (6)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--encode-batch", type=int, default=4)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--queue", type=int, default=64)
    parser.add_argument("--connect", type=int, metavar="PORT",
                        help="measure a server already listening on 127.0.0.1:PORT instead of starting one")
    parser.add_argument("--pid", type=int, help="with --connect: the server's process id, to report its CPU time")
    args = parser.parse_args()
    bodies = images()
    server, port = (None, args.connect) if args.connect else start_server(args)
    try:
        pid = server.pid if server is not None else args.pid
        run_phase(port, Phase("warm-up", 4, 2.0), bodies)
        phases = [run_phase(port, Phase("1 client, sequential", 1, args.seconds), bodies, pid=pid),
                  run_phase(port, Phase("8 concurrent clients", 8, args.seconds), bodies, pid=pid),
                  run_phase(port, Phase("64 concurrent clients", 64, args.seconds), bodies, pid=pid),
                  run_phase(port, Phase("200 at once (one request each)", 200, 0.0), bodies, burst=True, pid=pid)]
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    source = "london-uk" if len(bodies) > 8 else "example"
    print(f"geoscope serve, default model, {len(bodies)} distinct {source} photos, max batch {args.max_batch} "
          f"(encoder runs of {args.encode_batch}), max wait {args.max_wait_ms:g} ms, queue {args.queue}, "
          f"{os.cpu_count()} CPUs\n")
    print("| load | answered | requests/s | p50 ms | p99 ms | 503 busy | errors | server CPU ms/request |")
    print("|---|---|---|---|---|---|---|---|")
    for phase in phases:
        print(phase.row())
    ratio = phases[1].rate / phases[0].rate if phases[0].rate else float("nan")
    print(f"\n8 concurrent vs 1 sequential: {ratio:.2f}× the requests/s (goal ≥ 1.5×)")
    burst = phases[3]
    print(f"200 at once: {len(burst.latencies)} answered 200, {burst.busy} answered 503, "
          f"{len(burst.errors)} dropped or failed")
    for error in sorted(set(e for p in phases for e in p.errors))[:5]:
        print(f"  error: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
