"""What the speed benchmarks share: samples of the real sets, phone-like 12 MP JPEGs, and the runtimes to compare."""

from __future__ import annotations

import os
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PHOTO_SIZE = (4000, 3000)
PHOTO_NOISE = 3.6
"""Sensor-like noise (std of 8-bit levels) that makes a 4000×3000 JPEG at quality 90 about 1.6 MB, as a phone's."""


def sample_paths(name: str, n: int, seed: int = 0) -> list[Path]:
    """``n`` images of one real set (``../shared/data/NAME``), drawn at random, in manifest order."""
    from geoscope.data.manifest import read_manifest

    manifest = read_manifest(DATA / name / "manifest.csv")
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(manifest), size=min(n, len(manifest)), replace=False)
    return [manifest.image_paths[i] for i in sorted(rows)]


def phone_photo(seed: int, size: tuple[int, int] = PHOTO_SIZE, noise: float = PHOTO_NOISE) -> bytes:
    """A 12 MP JPEG (quality 90) as hard to decode as a phone's photo: colour gradients, large soft shapes and
    sensor noise; upscaled street frames are smooth and decode faster than real photos do."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([x / width * 200 + 30, y / height * 180 + 40, (x + y) / (width + height) * 160 + 50], axis=-1)
    shapes = rng.normal(128, 40, (height // 250 + 1, width // 250 + 1, 3)).clip(0, 255).astype(np.uint8)
    pixels += np.asarray(Image.fromarray(shapes).resize(size, Image.Resampling.BICUBIC), dtype=np.float32) - 128
    pixels += rng.normal(0, noise, pixels.shape).astype(np.float32)
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    from io import BytesIO

    buffer = BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_phone_photos(folder: Path, n: int, distinct: int = 8) -> list[Path]:
    """``n`` phone-like photos in ``folder``: ``distinct`` pictures, each file made unique by a JPEG comment (the
    feature cache knows files by their bytes; the comment costs the decoder nothing)."""
    pictures = [phone_photo(seed) for seed in range(min(n, distinct))]
    paths = []
    for i in range(n):
        data = pictures[i % len(pictures)]
        text = f"geoscope benchmark photo {i}".encode()
        path = folder / f"photo_{i:03d}.jpg"
        path.write_bytes(data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:])
        paths.append(path)
    return paths


def installed_runtimes() -> list:
    """The runtimes installed here, ONNX Runtime first (:class:`geoscope.encoders.runtime.Runtime`)."""
    from geoscope.encoders.runtime import Runtime, openvino_installed

    found = [Runtime("onnxruntime")]
    if openvino_installed():
        found += [Runtime("openvino", "fp32"), Runtime("openvino", "bf16")]
    return found


def with_london_frames(run: Callable[[Path], int]) -> int:
    """``run(tmp)`` under a temporary ``GEOSCOPE_CACHE`` in ``tmp`` (every timed predict starts cold), or 0 and one
    line saying what is missing where ``../shared/data/london-uk`` is not beside the repository."""
    if not (DATA / "london-uk" / "manifest.csv").is_file():
        print(f"skipped: needs {DATA / 'london-uk'}", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory(prefix="geoscope-bench-") as tmp:
        os.environ["GEOSCOPE_CACHE"] = str(Path(tmp) / "cache")
        return run(Path(tmp))

