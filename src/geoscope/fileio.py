"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import GeoscopeError, quote_name


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing; rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def sole_writer(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock beside ``path`` (``.<name>.lock``) while the block writes it; a second writer of the
    same file is refused in one line instead of interleaving its rows with the first's."""
    import fcntl  # POSIX; geoscope's outputs are written on Linux and macOS

    target = Path(path)
    lock = target.with_name(f".{target.name}.lock")
    target.parent.mkdir(parents=True, exist_ok=True)  # an output into a new folder is written there
    while True:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o666 & ~current_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise GeoscopeError(f"{quote_name(target)}: another geoscope is writing it; wait for it to finish, "
                                "or write to another file") from None
        try:  # the lock file may have been removed by the writer before us between our open and our lock
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)  # before the lock is let go: whoever opens the name next makes a new file
        os.close(fd)


def check_writable(path: str | os.PathLike[str], *, folder: bool = False) -> Path:
    """Refuse, before any work is done, an output that cannot be written; returns ``path``.

    ``path`` is a file to write (or, with ``folder``, a folder to fill). Its nearest existing
    ancestor must be a folder in which a file can really be created (tried, then removed);
    nothing else is created. Raises :class:`GeoscopeError` naming the output and the reason.
    """
    target = Path(path)
    shown = quote_name(target)
    if folder and target.exists() and not target.is_dir():
        raise GeoscopeError(f"{shown}: exists and is not a folder")
    if not folder and target.is_dir():
        raise GeoscopeError(f"{shown}: is a folder; give a file name to write")
    probe = target if folder and target.is_dir() else target.absolute().parent
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise GeoscopeError(f"{shown}: cannot be written, {quote_name(probe)} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".geoscope-write-test.", dir=probe)
    except OSError as exc:
        raise GeoscopeError(f"{shown}: cannot be written in {quote_name(probe)} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(tmp)
    return target


def current_umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | bytearray) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON to ``path`` atomically (NaN and infinities become null)."""
    atomic_write_text(path, json.dumps(finite_json(obj), indent=2, sort_keys=False, default=_json_default,
                                       allow_nan=False) + "\n")


def finite_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float (also in numpy scalars) replaced by None."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")
