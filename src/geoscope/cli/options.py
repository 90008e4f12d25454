"""Options several subcommands share, defined once."""

from __future__ import annotations

import argparse
import contextlib
import os

from ..models.image_side import ALL_BLOCKS


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


def finetune_blocks(text: str) -> int | str:
    """``--finetune-blocks``: a count of the encoder's last blocks, or ``all``."""
    if text.strip().lower() == ALL_BLOCKS:
        return ALL_BLOCKS
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of blocks or {ALL_BLOCKS!r}, not {text!r}") from None


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]`` and ``--ray-workers N``: the command as a Ray Data job (:mod:`geoscope.outputs.ray_jobs`)."""
    parser.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                        help="run as a Ray Data job: images decoded by Ray tasks, encoded by a pool of actors, "
                             "written here as without it; ADDRESS: a cluster's head (HOST:6379, or auto for the one "
                             "`ray start` began on this machine), none: a Ray instance on this machine alone "
                             "(needs pip install 'geoscope[ray]')")
    parser.add_argument("--ray-workers", type=at_least_one, metavar="N",
                        help="with --ray: encoder actors, one core each (default: half the cluster's cores)")


def ray_session(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """The Ray cluster ``--ray`` names for the command's jobs (Ray's installation checked now), or ``None``."""
    from ..errors import GeoscopeError

    if args.ray is None:
        if args.ray_workers is not None:
            raise GeoscopeError("--ray-workers sets the encoders of a Ray job: add --ray")
        return contextlib.nullcontext()
    from ..outputs.ray_jobs import ray_cluster

    return ray_cluster(args.ray or None, args.ray_workers)
