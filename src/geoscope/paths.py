"""Where geoscope keeps what it can rebuild: the cache folder (``GEOSCOPE_CACHE``, else ``~/.cache/geoscope``)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "GEOSCOPE_CACHE"


def cache_dir() -> Path:
    """The cache root: ``$GEOSCOPE_CACHE`` when set, else ``~/.cache/geoscope`` (not created here)."""
    value = os.environ.get(CACHE_ENV, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "geoscope"


def cache_subdir(*parts: str) -> Path:
    """A folder under the cache root, created if missing."""
    folder = cache_dir().joinpath(*parts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
