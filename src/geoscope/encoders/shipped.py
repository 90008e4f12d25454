"""Encoder graphs shipped with geoscope: the operators only; the weights are read from the installed package.

Exporting an encoder from torch (tracing, then ONNX's passes) took 1.7 s of a first ``predict``'s 5.7 s.
So the default encoder's graph ships in ``assets/encoders/`` without a single weight: ``NAME-FP.onnx``
(180 KB: every weight an *external* ONNX tensor, batch norms left unfolded so that each weight is the
package's own tensor, which the runtimes fold when they load it) and ``NAME-FP.json``, its card: the
weights file it was made for (its package, name and SHA-256) and, for every tensor of the graph, the key
of that file it is read from. On first use :func:`install_shipped` copies those tensors, in the card's
order, from the installed weights file into ``NAME-FP.weights`` beside the graph in the ONNX cache
(0.1 s); ONNX Runtime and OpenVINO read both. Nothing of a third party is in geoscope's files: the
weights come from the package that publishes them, checked by their hash; a weights file that differs
(another release) gets the graph exported from torch as before.

:func:`ship` writes the pair (``scripts/ship_encoder_graph.py NAME``); ``tests/test_shipped_graph.py``
checks that the shipped graph with the installed weights computes what the torch module computes.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..fileio import atomic_write_bytes, atomic_write_text
from .onnx_runtime import OPSET, onnx_graph, slug

if TYPE_CHECKING:
    from .spec import EncoderSpec

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "encoders"
"""Where the shipped graphs and their cards are."""
ALIGN = 64
"""Each tensor of a ``.weights`` file starts at a multiple of this many bytes."""


def shipped_stem(spec: EncoderSpec) -> str:
    """The file name (without suffix) of an encoder's graph, shipped or cached: ``NAME-FP``."""
    return f"{slug(spec.name)}-{spec.fingerprint[:12]}"


def weights_sidecar(graph: str | os.PathLike[str]) -> Path:
    """The ``.weights`` file beside a graph made from a shipped one."""
    return Path(graph).with_suffix(".weights")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def install_shipped(spec: EncoderSpec, graph: str | os.PathLike[str]) -> bool:
    """Write ``spec``'s shipped graph to ``graph`` (a file named ``NAME-FP.onnx``, as the graph names its weights
    ``NAME-FP.weights``) and its weights beside it, both atomically, the weights first; ``False`` (nothing
    written) when no graph is shipped for this encoder, or when its installed weights file is not the one the
    graph was made for."""
    if Path(graph).name != f"{shipped_stem(spec)}.onnx":
        raise ValueError(f"a shipped graph is installed as {shipped_stem(spec)}.onnx, not {Path(graph).name}")
    card_path = SHIPPED / f"{shipped_stem(spec)}.json"
    if spec.weights is None or not card_path.is_file():
        return False
    card = json.loads(card_path.read_text(encoding="utf-8"))
    if card["fingerprint"] != spec.fingerprint or file_sha256(spec.weights) != card["weights"]["sha256"]:
        return False
    import torch

    state = torch.load(spec.weights, map_location="cpu", weights_only=True)
    tensors = card["tensors"]
    end = max((t["offset"] + t["bytes"] for t in tensors), default=0)
    data = bytearray(end)
    for tensor in tensors:
        values = np.ascontiguousarray(state[tensor["key"]].numpy(), dtype=tensor["dtype"])
        if list(values.shape) != tensor["shape"]:
            return False
        data[tensor["offset"]:tensor["offset"] + values.nbytes] = values.tobytes()
    atomic_write_bytes(weights_sidecar(graph), data)
    atomic_write_bytes(graph, (SHIPPED / f"{shipped_stem(spec)}.onnx").read_bytes())
    return True


def ship(spec: EncoderSpec, folder: str | os.PathLike[str] = SHIPPED) -> tuple[Path, Path]:
    """Export ``spec``'s graph with its weights left out (each tensor external, named after the key of the
    weights file it comes from) into ``folder``: returns the graph and its card."""
    import onnx
    import torch
    from onnx import numpy_helper

    if spec.weights is None:
        raise ValueError(f"{spec.name}: its weights are not one file, so its graph cannot ship without them")
    module = spec.build().eval()
    size = spec.preprocess.crop_size
    model = onnx.load_from_string(onnx_graph(module, np.zeros((1, 3, size, size), dtype=np.float32),
                                             keep_weights=True))
    source = torch.load(spec.weights, map_location="cpu", weights_only=True)
    keys = _source_keys(module.state_dict(), source)
    stem = shipped_stem(spec)
    tensors, offset = [], 0
    for init in model.graph.initializer:
        values = numpy_helper.to_array(init)
        if init.name not in keys:
            raise ValueError(f"{spec.name}: tensor {init.name!r} of the graph is not in {spec.weights.name}")
        init.ClearField("raw_data")
        init.ClearField("float_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", f"{stem}.weights"), ("offset", str(offset)), ("length", str(values.nbytes))):
            entry = init.external_data.add()
            entry.key, entry.value = key, value
        tensors.append({"name": init.name, "key": keys[init.name], "offset": offset, "bytes": values.nbytes,
                        "shape": list(values.shape), "dtype": values.dtype.name})
        offset += -(-values.nbytes // ALIGN) * ALIGN
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    graph = folder / f"{stem}.onnx"
    atomic_write_bytes(graph, model.SerializeToString())
    package = _owning_package(spec.weights)
    card = {
        "encoder": spec.name, "fingerprint": spec.fingerprint,
        "weights": {"package": package, "file": spec.weights.name, "sha256": file_sha256(spec.weights)},
        "exported_with": f"torch {torch.__version__}, ONNX opset {OPSET}, batch norms unfolded",
    }
    head = json.dumps(card, indent=2)[:-2]  # one tensor a line: a card a person can read and diff
    rows = ",\n".join(f"    {json.dumps(tensor)}" for tensor in tensors)
    atomic_write_text(folder / f"{stem}.json", f'{head},\n  "tensors": [\n{rows}\n  ]\n}}\n')
    return graph, folder / f"{stem}.json"


def _source_keys(module_state: dict, source: dict) -> dict[str, str]:
    """Each tensor of the module → the key of the weights file holding the same values (the module's own name
    less a prefix its wrappers add, e.g. ``net.``)."""
    keys = {}
    for name, values in module_state.items():
        key = max((k for k in source if name == k or name.endswith("." + k)), key=len, default=None)
        if key is not None and source[key].shape == values.shape and bool((source[key] == values).all()):
            keys[name] = key
    return keys


def _owning_package(path: Path) -> str:
    """``name version`` of the installed distribution that holds ``path`` (``unknown`` when none does)."""
    for dist in metadata.distributions():
        for file in dist.files or ():
            if Path(str(dist.locate_file(file))).resolve() == path.resolve():
                return f"{dist.metadata['Name']} {dist.version}"
    return "unknown"
