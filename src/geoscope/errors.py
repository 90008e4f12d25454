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
