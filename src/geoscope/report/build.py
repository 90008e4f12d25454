"""Write the evaluation report: one folder with ``index.html``, its figures and thumbnails.

The folder is built beside the target under a temporary name and renamed into place, so a
reader never sees half a report; an earlier report in the same place is replaced.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import GeoscopeError
from ..evaluate.results import MODEL, EvaluationResult
from ..fileio import atomic_write_text
from . import html
from .comparison import comparison_rows, read_comparison_csv
from .examples import GRIDS, pick_examples, write_examples
from .maps import error_map_figure
from .plots import confusion_figure, cumulative_error_figure, reliability_figure, training_figure
from .tables import (
    display_name,
    has_labels,
    metric_rows,
    per_label_table,
    series_errors,
    series_names,
    split_metrics,
)

GENERATOR = f"geoscope report {__version__}"
REQUIRED_COLUMNS = ("image", "lat", "lon", "pred_lat", "pred_lon", "error_km")
CONFUSION_LABELS = 15
GRID_TITLES = {"best": "Best predictions", "worst": "Worst predictions", "random": "Random sample"}


def write_report(
    result: EvaluationResult,
    out_dir: str | os.PathLike[str],
    *,
    comparison_csv: str | os.PathLike[str] | None = None,
    examples_per_grid: int = 8,
    seed: int = 0,
) -> Path:
    """Write a self-contained HTML report of ``result`` into ``out_dir``; returns ``index.html``.

    ``comparison_csv`` adds the user's figures (columns ``name, dataset, accuracy, mean_km``,
    optional ``median_km``) to the comparison table. ``seed`` fixes the random example grid and
    the map's sample. Raises :class:`GeoscopeError` for a bad CSV, an empty result, or an
    ``out_dir`` that holds something other than an earlier report.
    """
    out_dir = Path(out_dir).absolute()
    _check_target(out_dir)
    _check_result(result)
    user_rows = read_comparison_csv(comparison_csv) if comparison_csv is not None else []
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".part", dir=out_dir.parent))
    try:
        os.chmod(work, 0o755)
        page = _build(result, work, user_rows, examples_per_grid, seed)
        atomic_write_text(work / "index.html", page)
        _replace_dir(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out_dir / "index.html"


def _check_target(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise GeoscopeError(f"{out_dir}: report folder is a file; choose a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not _is_report(out_dir):
        raise GeoscopeError(
            f"{out_dir}: folder exists and holds something other than a geoscope report; "
            "choose a new or empty folder"
        )


def _is_report(folder: Path) -> bool:
    index = folder / "index.html"
    try:
        head = index.read_bytes()[:4096].decode("utf-8", errors="replace")
    except OSError:
        return False
    return '<meta name="generator" content="geoscope report' in head


def _check_result(result: EvaluationResult) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in result.predictions]
    if missing:
        raise ValueError(f"EvaluationResult.predictions lacks column(s) {', '.join(missing)}")
    if len(result.predictions) == 0:
        raise GeoscopeError("nothing to report: the evaluation has no predictions")
    for name, frame in result.baselines.items():
        if "error_km" not in frame or len(frame) != len(result.predictions):
            raise ValueError(f"baseline {name!r} needs error_km for every prediction row")


def _replace_dir(new: Path, target: Path) -> None:
    if not target.exists():
        os.rename(new, target)
        return
    old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _build(result: EvaluationResult, folder: Path, user_rows: list, n_examples: int,
           seed: int) -> str:
    figures = folder / "figures"
    figures.mkdir()
    names = series_names(result)
    display = {n: display_name(n, result.model_name) for n in names}
    p = result.predictions
    errors = series_errors(result)
    labelled = has_labels(result)

    sections = [
        ("metrics", "Metrics", html.section(
            "metrics", "Metrics",
            html.metrics_table(metric_rows(result.metrics, names), names, display),
            f"{result.model_name} and the baselines on the same {len(p):,} items of "
            f"{result.dataset}. Distances are great-circle; the best of each row is in bold.")),
        ("comparison", "Comparison", html.section(
            "comparison", "Comparison with published figures",
            html.comparison_table(comparison_rows(result, user_rows)),
            "Accuracy is the share of items whose predicted label (cell or city) is the true one. "
            "The seed's figures were measured on its own UK dataset, not on this one: "
            "they show the scale of the task, not a like-for-like ranking.")),
    ]

    curve = cumulative_error_figure(errors, figures / "error_curve.png", names=display)
    sections.append(("error-curve", "Error curve", html.section(
        "error-curve", "Cumulative error curve",
        html.figure(_rel(curve, folder), "cumulative error curve", fig_id="error-curve-figure"),
        "Share of items predicted within d km of the truth, for every d; dotted lines mark "
        "1, 25, 200, 750 and 2500 km (street, city, region, country, continent).")))

    map_png = error_map_figure(p, figures / "map.png", seed=seed)
    sections.append(("map", "Map", html.section(
        "map", "Map of errors",
        html.figure(_rel(map_png, folder), "map of true and predicted locations",
                    fig_id="map-figure"),
        "Black dots: true locations; crosses: predictions; each line joins a pair and is "
        "coloured by its error.")))

    trust = _trust_section(result, folder, figures)
    if trust:
        sections.append(("trust", "Coverage and confidence", trust))

    grids = pick_examples(p, n_examples, seed)
    body = ""
    for grid in GRIDS:
        examples = write_examples(grids[grid], folder, grid)
        title = GRID_TITLES[grid] + (f" (seed {seed})" if grid == "random" else "")
        body += f"<h3>{html.esc(title)}</h3>" + html.example_grid(examples, f"examples-{grid}")
    sections.append(("examples", "Examples", html.section(
        "examples", "Example predictions", body,
        "Lowest errors, highest errors and a random sample; a green edge marks a correct "
        "label, a red edge a wrong one.")))

    sections.append(("labels", "Labels", _labels_section(result, folder, names, display, labelled)))
    sections.append(("splits", "Splits", _splits_section(result, folder, names, display)))
    sections.append(("training", "Training", _training_section(result, folder)))

    facts = [("model", result.model_name), ("dataset", result.dataset), ("items", f"{len(p):,}"),
             ("baselines", ", ".join(display[n] for n in names[1:]) or "none")]
    if "split" in p and p["split"].notna().any():
        facts.append(("splits", ", ".join(sorted(p["split"].dropna().astype(str).unique()))))
    return html.page(f"Evaluation: {result.model_name} on {result.dataset}", facts, sections,
                     generator=GENERATOR)


def _trust_section(result: EvaluationResult, folder: Path, figures: Path) -> str | None:
    """How many items the model called out of coverage, and whether its confidence means what it says."""
    p = result.predictions
    parts = []
    if "in_coverage" in p:
        inside = p["in_coverage"].to_numpy(dtype=bool)
        text = (f"{int((~inside).sum()):,} of {len(p):,} items ({(~inside).mean():.1%}) were flagged as outside "
                "what the model knows (\"don't know\").")
        if inside.any() and (~inside).any():
            text += (f" Median error inside coverage {np.median(p['error_km'][inside]):,.1f} km, "
                     f"outside {np.median(p['error_km'][~inside]):,.1f} km.")
        parts.append(f"<p>{html.esc(text)}</p>")
    figure = reliability_figure(p, figures / "reliability.png")
    if figure is not None:
        parts.append(html.figure(_rel(figure, folder), "reliability diagram", fig_id="reliability-figure"))
    if not parts:
        return None
    return html.section("trust", "Coverage and confidence", "".join(parts),
                        "The confidence beside each answer is the calibrated probability that the top guess is "
                        "within 25, 200 or 750 km; the diagram compares it with how often that came true here.")


def _rel(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


def _labels_section(result: EvaluationResult, folder: Path, names: list[str],
                    display: dict[str, str], labelled: bool) -> str:
    title = "Per-label accuracy"
    if not labelled:
        return html.section("labels", title, html.note(
            "This model predicts coordinates, not labels: "
            "no per-label accuracy or confusion matrix."))
    table = per_label_table(result)
    table.to_csv(folder / "per_label.csv", index=False, lineterminator="\n")
    p = result.predictions
    true = p["true_label"].dropna().astype(str)
    top = true.value_counts().head(CONFUSION_LABELS).index.tolist()
    pred = p.loc[true.index, "pred_label"].astype(str)
    confusion = confusion_figure(true.tolist(), pred.tolist(), top,
                                 folder / "figures" / "confusion.png")
    body = (f'<div class="scroll">{html.per_label_html(table, names, display)}</div>'
            '<p class="note"><a href="per_label.csv">per_label.csv</a> holds every label.</p>'
            f"<h3>Confusion matrix of the {len(top)} most frequent labels</h3>"
            + html.figure(_rel(confusion, folder), "confusion matrix", fig_id="confusion-figure",
                          narrow=True,
                          caption="Each row is a true label, normalised to 100%; labels outside "
                                  "the most frequent count as 'other'."))
    return html.section("labels", title, body,
                        f"{table.shape[0]:,} labels, best model accuracy first.")


def _splits_section(result: EvaluationResult, folder: Path, names: list[str],
                    display: dict[str, str]) -> str:
    title = "Per split"
    per_split = split_metrics(result)
    if not per_split:
        return html.section("splits", title, html.note(
            "The predictions carry no split column: every item is counted together above."))
    body = f'<div class="scroll">{html.split_table(per_split, names, display)}</div>'
    if len(per_split) > 1:
        split = result.predictions["split"].astype(str).to_numpy()
        errors = {s: result.predictions["error_km"].to_numpy(dtype=np.float64)[split == s]
                  for s in per_split}
        curves = cumulative_error_figure(errors, folder / "figures" / "split_curves.png",
                                         title=f"{result.model_name}, per split")
        body += html.figure(_rel(curves, folder), "cumulative error curve per split",
                            fig_id="split-curves-figure")
    return html.section("splits", title, body,
                        "The model and the baselines on each split's items.")


def _training_section(result: EvaluationResult, folder: Path) -> str:
    title = "Training curves"
    png = training_figure(result.history, folder / "figures" / "training.png") if result.history \
        else None
    if png is None:
        return html.section("training", title, html.note(
            "The model bundle holds no training history."))
    epochs = {row.get("epoch") for row in result.history}
    return html.section("training", title, html.figure(_rel(png, folder), "training curves",
                                                       fig_id="training-figure"),
                        f"Loss and accuracy per split over {len(epochs)} epochs.")


__all__ = ["MODEL", "write_report"]
