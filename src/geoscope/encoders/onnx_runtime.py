"""Frozen inference through ONNX Runtime: export a torch module once, check it, run it on all cores."""

from __future__ import annotations

import io
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..distributed import cores_per_process
from ..errors import GeoscopeError
from ..fileio import atomic_write_bytes
from ..paths import cache_subdir

if TYPE_CHECKING:
    from torch import nn

OPSET = 17
TOLERANCE = 1e-4
"""Largest difference allowed between ONNX Runtime and torch outputs (relative to their scale)."""


def slug(name: str) -> str:
    """A file-name-safe form of an encoder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:80] or "encoder"


def onnx_cache_path(name: str, fingerprint: str) -> Path:
    """Where the exported model of one encoder lives: ``<cache>/onnx/<name>-<hash>.onnx``."""
    return cache_subdir("onnx") / f"{slug(name)}-{fingerprint[:12]}.onnx"


def onnx_graph(module: nn.Module, example: np.ndarray, *, keep_weights: bool = False) -> bytes:
    """``module`` in eval mode (one float32 NCHW input → one output) traced on ``example`` into an ONNX graph with
    a dynamic batch axis, constants and batch norms folded into the convolutions.

    ``keep_weights``: nothing folded; every weight stays the module's own tensor under its own name (the runtimes
    fold the batch norms when they load the graph), so a graph shipped without them can take them back from the
    weights file (:mod:`geoscope.encoders.shipped`).
    """
    import torch

    module = module.eval()
    inputs = torch.from_numpy(np.ascontiguousarray(example, dtype=np.float32))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (inputs,), buffer, input_names=["images"], output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, opset_version=OPSET,
            do_constant_folding=not keep_weights, dynamo=False,
            training=torch.onnx.TrainingMode.PRESERVE if keep_weights else torch.onnx.TrainingMode.EVAL,
        )
    return buffer.getvalue()


def export_onnx(module: nn.Module, example: np.ndarray, path: str | os.PathLike[str], *,
                tolerance: float = TOLERANCE) -> float:
    """Export ``module`` (one float32 NCHW input → one output) with a dynamic batch axis.

    The module is put in eval mode, its ONNX Runtime output is compared with torch's on
    ``example`` and the file is written atomically only when they agree; returns the
    largest difference. Raises :class:`GeoscopeError` when they disagree.
    """
    import torch

    module = module.eval()
    model_bytes = onnx_graph(module, example)
    with torch.no_grad():
        expected = module(torch.from_numpy(np.ascontiguousarray(example, dtype=np.float32))).numpy()
    got = OnnxRunner(model_bytes)(example)
    error = float(np.max(np.abs(got - expected)) / max(1.0, float(np.max(np.abs(expected)))))
    if not error <= tolerance:
        raise GeoscopeError(
            f"ONNX export of {Path(path).name} disagrees with torch by {error:.2g} (> {tolerance:g}); "
            "use --backend torch"
        )
    atomic_write_bytes(path, model_bytes)
    return error


def onnx_device(device: str = "cpu", local_rank: int = 0) -> str:
    """``cpu``, ``cuda`` or ``auto`` → where ONNX Runtime runs: ``cpu`` or ``cuda:N`` (its CUDA provider).

    ``auto`` takes a GPU when this onnxruntime has the CUDA provider and torch sees a GPU;
    ``cuda`` without the provider is refused in one line.
    """
    import onnxruntime as ort

    if device not in ("auto", "cpu", "cuda"):
        raise GeoscopeError(f"device must be auto, cpu or cuda, not {device!r}")
    if device == "cpu":
        return "cpu"
    provider = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not provider:
        raise GeoscopeError("--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu), "
                            "or use --backend torch")
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cuda" and not gpus:
        raise GeoscopeError("--device cuda: no CUDA device is visible on this machine; use --device cpu or auto")
    return f"cuda:{local_rank % gpus}" if provider and gpus else "cpu"


class OnnxRunner:
    """An ONNX Runtime session with one input and one output, using every core (or a GPU: ``device="cuda:N"``).

    ``streams`` > 1 (CPU): a batch runs as that many parts at once, each on its own share of the threads (see
    :func:`geoscope.encoders.runtime.default_streams`); the session runs them side by side (it is thread-safe).
    """

    def __init__(self, model: str | os.PathLike[str] | bytes, *, threads: int | None = None,
                 device: str = "cpu", streams: int = 1) -> None:
        import onnxruntime as ort

        threads = threads or cores_per_process()  # torchrun: the cores shared out
        self.streams = max(1, min(streams, threads)) if device == "cpu" else 1
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads // self.streams)
        options.inter_op_num_threads = 1
        # no busy-waiting between operators: the decode threads need those cycles (predict on 2 cores: less CPU
        # per image, measured, and the same encoder-alone speed)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no memory plan replayed from the first batch: two encoders in one graph (a joint encoder) ran at
        # 32 instead of 53 images/s with it, one encoder alone within the noise (measured, 64 images a batch)
        options.enable_mem_pattern = False
        source = model if isinstance(model, bytes) else str(model)
        providers: list = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(device.partition(":")[2] or 0)}))
        try:
            self.session = ort.InferenceSession(source, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            where = "<bytes>" if isinstance(model, bytes) else str(model)
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise GeoscopeError(f"{where}: cannot load ONNX model ({first}); delete it to re-export") from None
        self.input_name = self.session.get_inputs()[0].name
        self._pool = ThreadPoolExecutor(self.streams - 1, thread_name_prefix="geoscope-stream") \
            if self.streams > 1 else None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch (in parts side by side, with streams); returns the first output as float32."""
        parts = split_batch(np.ascontiguousarray(batch, dtype=np.float32), self.streams)
        if self._pool is None or len(parts) == 1:
            return self._run(parts[0])
        others = [self._pool.submit(self._run, part) for part in parts[1:]]
        return np.concatenate([self._run(parts[0]), *(f.result() for f in others)])

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)


def split_batch(batch: np.ndarray, parts: int) -> list[np.ndarray]:
    """``batch`` cut along its first axis into at most ``parts`` runs of nearly equal length (views, no copies)."""
    return np.array_split(batch, max(1, min(parts, len(batch)))) if len(batch) else [batch]
