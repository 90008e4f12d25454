"""The service's memory after hostile uploads: 16 PNGs of 64 megapixels in one multipart request, three times.

Each PNG is a flat colour (200 kB on the wire, 192 MB decoded), so it passes the upload limit and the
decompression-bomb limit (80 MP) and must be decoded whole. Prints the server's resident memory after start
and after each request, in this process (the application under Starlette's test client).
Run: ``python benchmarks/serve_memory.py [--rounds 3] [--megapixels 64]``.
"""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image

from geoscope.serve import create_app

PHOTO = Path(__file__).resolve().parents[1] / "examples" / "images" / "croatia-1.jpg"


def resident_mb() -> float:
    """This process's resident memory (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--megapixels", type=float, default=64)
    args = parser.parse_args()
    side = int(math.sqrt(args.megapixels * 1e6))
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (120, 130, 140)).save(buffer, "PNG")
    png = buffer.getvalue()
    with TestClient(create_app()) as client:
        assert client.post("/predict", content=PHOTO.read_bytes()).status_code == 200
        start = resident_mb()
        print(f"16 PNGs of {side}x{side} ({len(png) / 1e3:.0f} kB each) per request")
        print(f"{'after':<12} {'RSS MB':>8} {'growth MB':>10} {'status':>7}")
        print(f"{'start':<12} {start:>8.0f} {0:>10.0f} {'':>7}")
        for i in range(args.rounds):
            files = [("files", (f"p{j}.png", png, "image/png")) for j in range(16)]
            status = client.post("/predict", files=files).status_code
            print(f"{f'request {i + 1}':<12} {resident_mb():>8.0f} {resident_mb() - start:>10.0f} {status:>7}")


if __name__ == "__main__":
    main()
