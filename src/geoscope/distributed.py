"""Processes working together: rank, world size, backend and device, over ``torch.distributed``.

``torchrun`` starts one process per device and tells each its place through the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` …); :func:`start` joins them into
one process group (gloo on CPUs, NCCL on GPUs). Without torchrun every function here answers
for a single process, rank 0 of 1, and communicates nothing, so callers need no branch.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import GeoscopeError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")
LOCAL_PROCESSES_ENV = "GEOSCOPE_LOCAL_PROCESSES"
"""How many processes of one job share this machine's cores outside torchrun (``serve --workers``)."""
TIMEOUT_ENV = "GEOSCOPE_DIST_TIMEOUT_MIN"
"""Minutes a collective (a barrier, a gradient all-reduce) may wait for a slower rank (default 60)."""


@dataclass(frozen=True)
class Run:
    """Where this process stands: its rank among ``world_size`` processes, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    """``gloo`` or ``nccl`` in a process group; ``None`` for a single process."""
    device: str = "cpu"

    @property
    def main(self) -> bool:
        """Rank 0: the process that prints progress and writes outputs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> dict:
        """What a model's config records about the run: world size, backend, machines, every rank's device.

        A collective: every rank calls it.
        """
        ranks = all_gather_object((socket.gethostname(), device_name(self.device)))
        return {"world_size": self.world_size, "backend": self.backend,
                "nodes": len({host for host, _ in ranks}), "devices": [device for _, device in ranks]}


def device_name(device: str) -> str:
    """A torch device with, for a GPU, its model: ``cuda:0 (NVIDIA H200)``."""
    if not device.startswith("cuda"):
        return device
    import torch

    return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"


def launched() -> bool:
    """Whether ``torchrun`` (or another launcher setting ``WORLD_SIZE`` > 1) started this process."""
    return _env_int("WORLD_SIZE", 1) > 1


def resolve_device(spec: str = "auto", local_rank: int = 0) -> str:
    """``cpu``, ``cuda`` or ``auto`` (a GPU when torch sees one) → a torch device name (``cuda:1``)."""
    import torch

    if spec not in DEVICES:
        raise GeoscopeError(f"device must be one of {', '.join(DEVICES)}, not {spec!r}")
    cuda = torch.cuda.is_available()
    if spec == "cuda" and not cuda:
        raise GeoscopeError("--device cuda: torch sees no CUDA device on this machine; use --device cpu or auto")
    if spec == "cpu" or not cuda:
        return "cpu"
    return f"cuda:{local_rank % torch.cuda.device_count()}"


def start(device: str = "auto") -> Run:
    """Join the process group torchrun prepared (once), or describe a single process.

    On GPUs each process takes the GPU of its local rank and the group uses NCCL; on CPUs, gloo.
    """
    import torch
    import torch.distributed as dist

    if not launched():
        return Run(device=resolve_device(device))
    local_rank = _env_int("LOCAL_RANK", 0)
    resolved = resolve_device(device, local_rank)
    backend = "nccl" if resolved.startswith("cuda") else "gloo"
    if resolved.startswith("cuda"):
        torch.cuda.set_device(torch.device(resolved))
    if not dist.is_initialized():
        minutes = float(os.environ.get(TIMEOUT_ENV, "60") or 60)
        try:
            dist.init_process_group(backend, timeout=timedelta(minutes=minutes))
        except (RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GeoscopeError(f"cannot join the {backend} process group torchrun prepared ({first})") from None
    return Run(dist.get_rank(), dist.get_world_size(), local_rank, _env_int("LOCAL_WORLD_SIZE", 1),
               dist.get_backend(), resolved)


def finish() -> None:
    """Leave the process group (if one was joined)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gc.collect()  # a DistributedDataParallel left for the collector must go while its process group lives
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[Run]:
    """:func:`start` on entry, :func:`finish` on exit."""
    run = start(device)
    try:
        yield run
    finally:
        finish()


def current(device: str = "cpu") -> Run:
    """This process's rank and world as the process group knows them (rank 0 of 1 without one)."""
    if not _initialized():
        return Run(device=device)
    import torch.distributed as dist

    return Run(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0),
               _env_int("LOCAL_WORLD_SIZE", 1), dist.get_backend(), device)


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
_PR_SET_THP_DISABLE = 41


def use_small_pages() -> bool:
    """Back this process's memory (and its children's) with ordinary 4 KB pages where Linux would otherwise give
    every large allocation transparent huge pages (the ``always`` setting); returns whether it did.

    With ``always``, each 2 MB page of a fresh array is found, zeroed and mapped at its first touch, and the answer's
    large temporaries (8,512 features a row) paid it at every call: a fresh process predicting 1,436 photos read
    182 images/s with huge pages and 283 with small ones (3 runs each, quiet 2-core VM; system time 4.9 → 1.4 s).
    Nothing changes where huge pages are only given on request (``madvise``) or never, or outside Linux.
    """
    try:
        if "[always]" not in THP_SETTING.read_text():
            return False
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


SPIN_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
"""What tells OpenMP (torch's threads) how long an idle thread waits busily for the next parallel region."""
IDLE_SPINS = "10000"
"""Spins of an idle OpenMP thread before it sleeps (GNU OpenMP's default: 300,000, some milliseconds)."""


def idle_threads_sleep_soon() -> bool:
    """Have torch's OpenMP threads sleep soon after their work runs out, unless the environment already says how
    they wait (:data:`SPIN_ENV`); returns whether it did. OpenMP reads this when torch loads: call it first.

    By default each of them spins for milliseconds after every parallel region, on cycles the image decoding
    and the encoder's threads need; on a machine another job loads, a spinning thread also holds a core the
    other threads of its region wait for (docs/performance.md, "Idle threads").
    """
    if "torch" in sys.modules or any(name in os.environ for name in SPIN_ENV):
        return False
    os.environ["GOMP_SPINCOUNT"] = IDLE_SPINS
    return True


def idle_thread_settings() -> dict[str, str]:
    """How this process's OpenMP threads wait (:data:`SPIN_ENV`), for the processes it starts elsewhere (Ray's)."""
    return {name: os.environ[name] for name in SPIN_ENV if name in os.environ}


def cores_per_process() -> int:
    """This machine's cores shared among the processes torchrun (or ``serve --workers``, :data:`LOCAL_PROCESSES_ENV`)
    started on it (all of them for one process)."""
    return max(1, cpu_count() // max(1, _env_int("LOCAL_WORLD_SIZE", _env_int(LOCAL_PROCESSES_ENV, 1))))


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for in a single process)."""
    if _initialized():
        import torch.distributed as dist

        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not _initialized():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_rows(x: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Rows of every rank (``counts[r]`` from rank ``r``) concatenated in rank order, for a loss over all of them.

    Gradients flow only into this rank's own rows, multiplied by the world size: a loss that
    every rank computes alike on the gathered rows then gets, once DDP averages the ranks'
    gradients, the gradient one process would compute on all rows. No collective runs backward.
    """
    if not _initialized():
        return x
    import torch
    import torch.distributed as dist

    world, most = dist.get_world_size(), max(counts)
    padded = torch.cat([x.detach(), x.new_zeros((most - len(x), *x.shape[1:]))]) if len(x) < most else x.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    own = x * 1  # exactly x, with its own gradient hook
    if own.requires_grad:
        own.register_hook(lambda grad: grad * world)
    parts[dist.get_rank()] = own
    return torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)])


def _initialized() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default
