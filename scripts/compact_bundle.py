"""Store a bundle's weights small: its widest matrices as int8 with scales, other float32 matrices as float16.

What made the bundled default model 55 → 27 MB with the same answers on its test split
(``docs/bundle-size.md``: the measurements, and what changed answers and was not kept). The bundle is
rewritten in place, atomically (the old weights stay until the new ones are whole), and read back to check
that every tensor is still there. Run:
``.venv/bin/python scripts/compact_bundle.py BUNDLE_DIR [--int8 NAME ...] [--keep NAME ...]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save

from geoscope.bundle import WEIGHTS, read_bundle
from geoscope.bundle.storage import compact, expand
from geoscope.fileio import atomic_open

INT8 = "image_head.projection.weight"
"""Default int8 matrices: every head's first projection (256 × the image features' width)."""
KEEP = ".precision_root"
"""Default float32 matrices: the typicality tests' whitening (``typicality.precision_root`` and those one level down,
``typicality.G.precision_root``; in half precision, coverage scores moved 0.013)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--int8", nargs="*", help=f"tensors to store as int8 (default: every *{INT8})")
    parser.add_argument("--keep", nargs="*",
                        help=f"float32 matrices to keep in float32 (default: every typicality*{KEEP})")
    args = parser.parse_args()
    path = args.bundle / WEIGHTS
    tensors = expand(load_file(str(path)))
    int8 = args.int8 if args.int8 is not None else [k for k in tensors if k.endswith(INT8)]
    keep = args.keep if args.keep is not None else [k for k in tensors if k.startswith("typicality.")
                                                     and k.endswith(KEEP)]
    small = compact(tensors, int8=int8, keep=keep)
    before = path.stat().st_size
    with atomic_open(path) as handle:
        handle.write(save({k: np.ascontiguousarray(v) for k, v in small.items()}))
    back = read_bundle(args.bundle).tensors
    assert set(back) == set(tensors), "tensor names changed"
    worst = max((float(np.abs(back[k] - tensors[k]).max() / np.abs(tensors[k]).max()) for k in int8), default=0.0)
    print(f"{path}: {before:,} → {path.stat().st_size:,} bytes; int8 error at most {worst:.2e} of a matrix's "
          f"largest weight ({len(int8)} int8 matrices)")


if __name__ == "__main__":
    main()
