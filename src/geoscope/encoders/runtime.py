"""Which inference runtime runs a frozen encoder's ONNX graph, and at which precision.

``onnxruntime`` (always installed) runs float32; ``openvino`` (Intel's runtime, from PyPI) runs
float32 or bfloat16, the latter on the matrix units of CPUs that have them (AMX, AVX-512 BF16), where it
is about twice as fast. ``auto`` decides from the CPU's flags, with nothing to measure at start-up:
OpenVINO in bfloat16 where the CPU computes in bfloat16 natively and OpenVINO is installed, else ONNX
Runtime in float32 (OpenVINO's float32 measured within the noise of ONNX Runtime's, see
``benchmarks/runtimes.py``). A GPU always takes ONNX Runtime.

The choice comes from the caller (``--runtime``) or the ``GEOSCOPE_RUNTIME`` variable, as
``NAME[:PRECISION]``: ``auto``, ``onnxruntime``, ``openvino``, ``openvino:bf16``, ``openvino:fp32``.
Features in bfloat16 differ from float32 ones (cosine ≥ 0.999), so they are cached under their own key.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..distributed import cores_per_process
from ..errors import GeoscopeError, warn
from .onnx_runtime import OnnxRunner
from .openvino_runtime import OpenVinoRunner, OpenVinoUnavailable

RUNTIMES = ("auto", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16")
ENV_RUNTIME = "GEOSCOPE_RUNTIME"
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
"""CPU flags (``/proc/cpuinfo``) of native bfloat16 arithmetic."""


class Runner(Protocol):
    """A compiled graph with one input and one output: float32 ``(n, 3, H, W)`` → float32 ``(n, ...)``."""

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Runtime:
    """A runtime and the precision it computes in."""

    name: str = "onnxruntime"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.name not in RUNTIMES[1:]:
            raise GeoscopeError(f"unknown runtime {self.name!r}: use {', '.join(RUNTIMES)}")
        if self.precision not in PRECISIONS:
            raise GeoscopeError(f"unknown precision {self.precision!r}: use {' or '.join(PRECISIONS)}")
        if self.precision == "bf16" and self.name != "openvino":
            raise GeoscopeError("bf16 runs on OpenVINO: use --runtime openvino:bf16")

    def __str__(self) -> str:
        return f"{self.name} {self.precision}"

    @property
    def cache_suffix(self) -> str:
        """Added to a feature cache's key when the features differ from float32 ONNX Runtime's beyond its
        tolerance (OpenVINO's float32 agrees to 1e-6 and shares the key)."""
        return "" if self.precision == "fp32" else f"-{self.precision}"


def openvino_installed() -> bool:
    """Whether the ``openvino`` package can be imported (it is found without importing it)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (empty where ``/proc/cpuinfo`` does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def resolve_runtime(choice: str | None = None, *, device: str = "cpu") -> Runtime:
    """The runtime ``choice`` names (``None``: ``$GEOSCOPE_RUNTIME``, else ``auto``), for ``device``."""
    text = (choice if choice is not None else os.environ.get(ENV_RUNTIME, "")).strip().lower() or "auto"
    name, _, precision = text.partition(":")
    if name not in RUNTIMES:
        raise GeoscopeError(f"unknown runtime {text!r}: use {', '.join(RUNTIMES)}, optionally with :fp32 or :bf16")
    if device != "cpu":
        if name == "openvino":
            raise GeoscopeError(f"runtime openvino runs on the CPU, not {device}")
        return Runtime("onnxruntime", precision or "fp32")
    bf16 = BF16_FLAGS & cpu_flags()
    if name == "auto":
        name = "openvino" if bf16 and openvino_installed() and precision != "fp32" else "onnxruntime"
    if name == "openvino" and not openvino_installed():
        raise GeoscopeError("runtime openvino is not installed: pip install openvino (or use --runtime onnxruntime)")
    return Runtime(name, precision or ("bf16" if name == "openvino" and bf16 else "fp32"))


MAX_STREAMS = 4
"""Most parts a batch is run as at once (a batch of 16 in parts of 4 images still runs efficiently)."""


def default_streams(threads: int | None = None) -> int:
    """How many streams run an encoder on ``threads`` cores (default: this process's): one per core, at most
    :data:`MAX_STREAMS`.

    A stream is a share of the threads with a request of its own; a batch runs as one part per stream, side by
    side. On 2 cores, two single-threaded streams encoded more images per CPU second than one request whose
    operators are split over both threads (OpenVINO bf16 4.4 against 5.6 ms of CPU an image, ONNX Runtime 8.9
    against 10.6, on a loaded machine: no thread waits at each operator for another the decoders displaced), and
    the decoders' work fits between them; a batch of one image runs on one stream's threads.
    """
    return max(1, min(MAX_STREAMS, threads or cores_per_process()))


def make_runner(model: str | os.PathLike[str], runtime: Runtime, *, device: str = "cpu",
                threads: int | None = None, streams: int | None = None) -> tuple[Runner, Runtime]:
    """The ONNX file ``model`` compiled by ``runtime`` on ``threads`` cores in ``streams`` streams (default:
    :func:`default_streams`; 1: each batch one request over every thread), and the runtime that runs it: where
    OpenVINO cannot be loaded or cannot compile the graph, ONNX Runtime in float32, said in one warning line.
    Raises :class:`GeoscopeError` when ONNX Runtime cannot load the file either (the file is at fault)."""
    streams = default_streams(threads) if streams is None else streams
    if runtime.name == "openvino":
        try:
            return OpenVinoRunner(model, precision=runtime.precision, threads=threads, streams=streams), runtime
        except OpenVinoUnavailable as exc:
            fallback = Runtime()
            runner = OnnxRunner(model, threads=threads, device=device, streams=streams)
            warn(f"{exc}; running on {fallback} instead")
            return runner, fallback
    return OnnxRunner(model, threads=threads, device=device, streams=streams), runtime
