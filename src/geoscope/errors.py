"""One exception type for every problem a user can fix; the CLI prints it as one line."""

from __future__ import annotations


class GeoscopeError(Exception):
    """A problem with the user's input, files or environment, explained in one line.

    The CLI catches it, prints ``geoscope: error: <message>`` and exits with code 2.
    """


class BadImageError(GeoscopeError):
    """An image that cannot be read: missing, corrupt, truncated, not an image, or too large."""


class ManifestError(GeoscopeError):
    """A manifest that breaks the schema: missing column, bad coordinate, duplicate, missing image."""


class ModelError(GeoscopeError):
    """A model bundle that is missing, truncated or incompatible."""


def quote_name(name: object) -> str:
    """A file name (or other user text) for a one-line message: as it is when printable, else
    quoted with ``!r`` (``'a\\nb.jpg'``), so a newline or an escape never splits or garbles the line."""
    text = str(name)
    return text if text.isprintable() else repr(text)


def one_line(message: str) -> str:
    """``message`` with every unprintable character (newline, tab, escape) written as its escape."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in message)


def warn(message: str) -> None:
    """Say on stderr, in one line, what went wrong and what is done instead (``geoscope: warning: …``)."""
    import sys

    print(f"geoscope: warning: {one_line(message)}", file=sys.stderr)
