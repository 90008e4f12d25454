"""Thread counts for small matrix work that runs beside the image encoder."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits


@contextmanager
def one_math_thread() -> Iterator[None]:
    """One torch and one BLAS thread inside the block, as before it after.

    The head's matrices are tiny: one thread answers in a few ms, where a pool of them competes
    with the encoder and the decoders and then spins idle, taking cycles the next batch needs.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)
