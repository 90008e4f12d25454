"""geoscope: tell where a street-level photo was taken from its pixels alone."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(model_dir=None):
    """Load a model bundle (the bundled default when ``model_dir`` is None); see :mod:`geoscope.bundle`."""
    from .bundle import load_bundle

    return load_bundle(model_dir)
