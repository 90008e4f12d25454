"""Entry point of the ``geoscope`` command.

Each module in ``TOP_LEVEL`` adds top-level subcommands and each in ``DATA`` adds
``geoscope data …`` subcommands, through a ``register(subparsers)`` function that sets
``func`` on its parser. Every user-fixable problem is a :class:`GeoscopeError`, printed
as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..distributed import use_small_pages
from ..errors import GeoscopeError, one_line
from .options import apply_runtime

DATA = ("geoscope.cli.data_local", "geoscope.cli.data_remote")
TOP_LEVEL = (
    "geoscope.cli.features",
    "geoscope.cli.labels",
    "geoscope.cli.train",
    "geoscope.cli.predict",
    "geoscope.cli.verify",
    "geoscope.cli.evaluate",
    "geoscope.cli.serve",
)


DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
               errno.EFBIG: "a file grew over the size limit", errno.EROFS: "the file system is read-only"}
"""Errors of the disk, not of geoscope: one line, like any problem a user can fix."""


SIGNED_OPTIONS = ("--at",)
"""Options whose value may start with a minus (a southern latitude: ``--at -33.87,151.21``)."""


def signed_values(argv: list[str]) -> list[str]:
    """``argv`` with each value of :data:`SIGNED_OPTIONS` that starts with a minus and a digit glued to its option
    (``--at=-33.87,151.21``), which argparse would otherwise read as an option of its own."""
    out: list[str] = []
    glue = False
    for token in argv:
        if glue and len(token) > 1 and token[0] == "-" and (token[1].isdigit() or token[1] == "."):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
        glue = token in SIGNED_OPTIONS
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geoscope", description="Tell where a street-level photo was taken from its pixels."
    )
    parser.add_argument("--version", action="version", version=f"geoscope {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    data = commands.add_parser("data", help="build, check, import and split datasets")
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    for name in DATA:
        _register(name, data_commands)
    for name in TOP_LEVEL:
        _register(name, commands)
    return parser


def _register(module_name: str, subparsers: argparse._SubParsersAction) -> None:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:  # command not present in this installation
            return
        raise
    module.register(subparsers)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(signed_values(argv))
    args.argv = argv  # the command as given, for records such as a model's training command
    use_small_pages()
    try:
        if hasattr(args, "runtime"):  # a command that runs an image encoder
            apply_runtime(args.runtime)
        code = args.func(args)
    except GeoscopeError as exc:
        print(f"geoscope: error: {one_line(str(exc))}", file=sys.stderr)  # a newline never splits it
        return 2
    except KeyboardInterrupt:
        print("geoscope: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        if exc.errno not in DISK_ERRORS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"geoscope: error: {where}{DISK_ERRORS[exc.errno]} ({exc.strerror}); finished work is kept: "
              "make room and rerun", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
