"""Thread counts for the heads' matrix work, beside the image encoder or after it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits


@contextmanager
def math_threads(torch_threads: int = 1) -> Iterator[None]:
    """``torch_threads`` torch threads and one BLAS thread inside the block, as before it after.

    One torch thread where the heads answer while the encoder runs (serve): a pool of them competes
    with the encoder and the decoders. Every core where the heads answer alone (predict, once the
    images are encoded): the default model answers 384 images in 80 ms on two cores, 120 ms on one.
    BLAS (numpy's matrix products) keeps one thread either way: its pool spins idle after each call,
    taking cycles the encoder's next batch needs.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, torch_threads))
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)
