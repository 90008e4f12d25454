"""Thread counts for the heads' matrix work, beside the image encoder or after it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits


@contextmanager
def math_threads(torch_threads: int = 1) -> Iterator[None]:
    """``torch_threads`` torch threads and one BLAS thread inside the block, as before it after.

    Every core of the process where the heads answer (predict, once the images are encoded: the default model
    answers 384 images in 80 ms on two cores, 120 ms on one; serve, whose answers mostly run while nothing encodes).
    BLAS (numpy's matrix products) keeps one thread: its pool spins idle after each call, taking cycles the
    encoder's next batch needs.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, torch_threads))
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)
