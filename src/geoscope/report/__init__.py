"""The evaluation report: ``geoscope evaluate --report DIR`` writes an offline HTML page.

It shows the metrics beside the baselines, a comparison with published figures, the
cumulative error curve, a map of errors, example grids, per-label and per-split results and
training curves. Use :func:`write_report`.
"""

from __future__ import annotations

from .build import write_report
from .comparison import read_comparison_csv
from .seed import SEED_FIGURES, PublishedFigure

__all__ = ["SEED_FIGURES", "PublishedFigure", "read_comparison_csv", "write_report"]
