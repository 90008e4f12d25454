"""Options several subcommands share, defined once."""

from __future__ import annotations

import argparse
import os


def add_runtime_option(parser: argparse.ArgumentParser) -> None:
    """``--runtime NAME[:PRECISION]``: what runs the image encoder (:mod:`geoscope.encoders.runtime`)."""
    parser.add_argument("--runtime", metavar="NAME[:PRECISION]",
                        help="what runs the image encoder: auto (default: OpenVINO in bf16 on CPUs with AMX or "
                             "AVX-512 BF16, else ONNX Runtime), onnxruntime, openvino, openvino:fp32, openvino:bf16; "
                             "also $GEOSCOPE_RUNTIME")


def apply_runtime(choice: str | None) -> None:
    """The command's ``--runtime`` (else ``$GEOSCOPE_RUNTIME``) checked now, one line before any work, and made
    the process's choice."""
    from ..encoders.runtime import ENV_RUNTIME, resolve_runtime
    from ..errors import GeoscopeError

    if choice is not None:
        resolve_runtime(choice)
        os.environ[ENV_RUNTIME] = choice  # read where encoders are made, in this process and in its workers
        return
    try:
        resolve_runtime()
    except GeoscopeError as exc:
        raise GeoscopeError(f"{ENV_RUNTIME}={os.environ.get(ENV_RUNTIME, '')!r}: {exc}") from None


def at_least_one(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
