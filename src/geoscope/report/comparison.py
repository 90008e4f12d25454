"""The comparison table: this evaluation's rows, the seed's published figures, the user's CSV."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..errors import GeoscopeError
from ..evaluate.results import MODEL, EvaluationResult
from .html import finite_or_none
from .seed import SEED_FIGURES, PublishedFigure
from .tables import display_name

CSV_COLUMNS = ("name", "dataset", "accuracy", "mean_km")
"""Required columns of a user comparison CSV; ``median_km`` is optional."""


def read_comparison_csv(path: str | os.PathLike[str]) -> list[PublishedFigure]:
    """Read the user's figures: columns ``name, dataset, accuracy, mean_km`` (+ ``median_km``).

    ``accuracy`` is a fraction 0–1 or a percentage written with ``%`` (``14.3%``); numbers may
    be empty. Raises :class:`GeoscopeError` (one line) for a missing file or a bad table.
    """
    path = Path(path)
    if not path.is_file():
        raise GeoscopeError(f"{path}: comparison CSV not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GeoscopeError(f"{path}: cannot parse comparison CSV ({first})") from None
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    missing = [c for c in CSV_COLUMNS if c not in frame]
    if missing:
        raise GeoscopeError(
            f"{path}: comparison CSV lacks column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} (needs {', '.join(CSV_COLUMNS)}, optional median_km)"
        )
    if frame.empty:
        raise GeoscopeError(f"{path}: comparison CSV has no rows")
    rows = []
    for i, record in enumerate(frame.to_dict("records")):
        where = f"{path}: row {i + 2}"
        name = str(record["name"]).strip()
        if not name:
            raise GeoscopeError(f"{where}: name is empty")
        rows.append(PublishedFigure(
            name=name,
            dataset=str(record["dataset"]).strip(),
            accuracy=_accuracy(record["accuracy"], where),
            mean_km=_number(record["mean_km"], "mean_km", where),
            median_km=_number(record.get("median_km", ""), "median_km", where),
            source=str(path),
        ))
    return rows


def _number(text: str, column: str, where: str) -> float | None:
    text = str(text).strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise GeoscopeError(f"{where}: {column} {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise GeoscopeError(f"{where}: {column} must be a non-negative number, got {text!r}")
    return value


def _accuracy(text: str, where: str) -> float | None:
    text = str(text).strip()
    if text.endswith("%"):
        value = _number(text[:-1], "accuracy", where)
        scale = 100.0
    else:
        value = _number(text, "accuracy", where)
        scale = 1.0
    if value is not None and value / scale > 1:
        raise GeoscopeError(
            f"{where}: accuracy {text!r} is over 1; "
            "write a fraction (0.143) or a percentage (14.3%)"
        )
    return None if value is None else value / scale


def evaluation_rows(result: EvaluationResult) -> list[PublishedFigure]:
    """This evaluation's model and baselines as comparison rows."""
    rows = []
    for name in [MODEL, *result.baselines]:
        metrics = result.metrics.get(name)
        if metrics is None:
            continue
        title = f"{result.model_name} (this model)" if name == MODEL else display_name(name, "")
        rows.append(PublishedFigure(
            name=title,
            dataset=result.dataset,
            accuracy=finite_or_none(metrics.get("label_accuracy")),
            mean_km=finite_or_none(metrics.get("mean_km")),
            median_km=finite_or_none(metrics.get("median_km")),
            source="this evaluation",
        ))
    return rows


def comparison_rows(
    result: EvaluationResult, user: Sequence[PublishedFigure] = ()
) -> list[PublishedFigure]:
    """Every row of the comparison table: this evaluation, the seed, then the user's figures."""
    return [*evaluation_rows(result), *SEED_FIGURES, *user]
