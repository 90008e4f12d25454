"""Frozen inference through OpenVINO: the exported ONNX graph compiled for this CPU, in float32 or bfloat16."""

from __future__ import annotations

import os

import numpy as np

from ..distributed import cores_per_process, cpu_count
from ..errors import GeoscopeError, warn
from ..paths import cache_subdir
from .onnx_runtime import split_batch

PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoUnavailable(GeoscopeError):
    """OpenVINO cannot be loaded, or cannot compile a graph for this CPU (ONNX Runtime may run it instead)."""


class OpenVinoRunner:
    """An ONNX graph compiled by OpenVINO for the CPU, on every core given.

    One stream (``streams=1``, the latency hint): each batch runs as one request over all the threads. More
    streams (the throughput hint): each stream has its own share of the threads and its own request, and a
    batch runs as that many parts at once (see :func:`geoscope.encoders.runtime.default_streams`). Raises
    :class:`OpenVinoUnavailable` in one line when OpenVINO cannot be imported (a broken install) or cannot
    compile the graph (a missing CPU plugin, an operator it lacks). A compiled graph in the cache that is
    damaged is OpenVINO's own business: it compiles again (measured: a truncated, overwritten or
    bit-flipped blob, even a folder in its place, all gave the same features).
    """

    def __init__(self, model: str | os.PathLike[str], *, precision: str = "fp32",
                 threads: int | None = None, streams: int = 1) -> None:
        try:
            import openvino as ov  # optional and heavy: loaded only when this runtime is chosen
        except (ImportError, OSError) as exc:
            raise OpenVinoUnavailable(f"OpenVINO cannot be loaded ({_first_line(exc)})") from None
        threads = threads or cores_per_process()
        streams = max(1, min(streams, threads))
        config = {"PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT", "INFERENCE_NUM_THREADS": threads,
                  "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision]}
        if streams > 1:
            config["NUM_STREAMS"] = streams
        # threads pinned to cores only where they take every core this process may run on: processes sharing a
        # machine (serve --workers, Ray actors, torchrun) each pinned their thread to the same first core (two
        # processes of one thread: 115 images/s each pinned, 242 each not, measured)
        config["ENABLE_CPU_PINNING"] = threads >= cpu_count()
        try:  # the compiled graph is kept: a later start loads it instead of compiling again
            config["CACHE_DIR"] = str(cache_subdir("openvino"))
        except GeoscopeError as exc:
            warn(f"{exc}; OpenVINO compiles without keeping its graph")
        try:
            core = ov.Core()
            # read first: compiled from a path, OpenVINO finds its kept graph by the path alone, and a file replaced
            # under the same name would get the old graph (measured); from the model, by its contents
            self.compiled = core.compile_model(core.read_model(str(model)), "CPU", config)
            self.requests = [self.compiled.create_infer_request() for _ in range(streams)]
        except Exception as exc:  # OpenVINO raises its own exception types
            raise OpenVinoUnavailable(f"{model}: OpenVINO cannot compile the graph ({_first_line(exc)})") from None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch (in parts side by side, with streams); returns the first output as float32."""
        parts = split_batch(np.ascontiguousarray(batch, dtype=np.float32), len(self.requests))
        # the parts read in place (a copy of the batch cost 4 ms of a 16-image batch's 50 ms in bf16, measured)
        for request, part in zip(self.requests, parts, strict=False):
            request.start_async({0: part}, share_inputs=True)
        outputs = []
        for request, _ in zip(self.requests, parts, strict=False):
            request.wait()
            outputs.append(np.array(request.get_output_tensor(0).data, dtype=np.float32))  # a copy: reused buffers
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)


def _first_line(exc: BaseException) -> str:
    """The first line of an error that says what went wrong (OpenVINO's start with lines naming its sources)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    said = [line for line in lines if line and not line.startswith("Exception from ")]
    return said[0] if said else type(exc).__name__
