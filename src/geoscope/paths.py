"""Where geoscope keeps what it can rebuild: the cache folder (``GEOSCOPE_CACHE``, else ``~/.cache/geoscope``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import GeoscopeError, quote_name

CACHE_ENV = "GEOSCOPE_CACHE"


def cache_dir() -> Path:
    """The cache root: ``$GEOSCOPE_CACHE`` when set, else ``~/.cache/geoscope`` (not created here)."""
    value = os.environ.get(CACHE_ENV, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "geoscope"


def cache_subdir(*parts: str) -> Path:
    """A folder under the cache root, created if missing (see :func:`writable_cache_folder`)."""
    return writable_cache_folder(cache_dir().joinpath(*parts))


def writable_cache_folder(folder: str | os.PathLike[str], *, under_cache_root: bool = True) -> Path:
    """Create ``folder`` (a cache folder) if missing and check that files can be written in it.

    Raises :class:`GeoscopeError` in one line naming the folder, and ``GEOSCOPE_CACHE`` (or
    how to set it) when the folder is under the cache root, when it is below a file, cannot
    be created or is read-only.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".geoscope-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if not under_cache_root:
            raise GeoscopeError(f"cannot use the cache folder {quote_name(folder)} ({reason})") from None
        value = os.environ.get(CACHE_ENV, "").strip()
        where = f"{CACHE_ENV}={quote_name(value)}: " if value else ""
        fix = f"point {CACHE_ENV} at a writable folder" if value else f"set {CACHE_ENV} to a writable folder"
        raise GeoscopeError(f"{where}cannot use the cache folder {quote_name(folder)} ({reason}); {fix}") from None
    return folder
