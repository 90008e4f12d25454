"""Example grids: the best, worst and a random sample of predictions, as captioned thumbnails."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import BadImageError
from ..images import open_image

THUMBNAIL_PX = 256
GRIDS = ("best", "worst", "random")


@dataclass(frozen=True)
class Example:
    """One captioned thumbnail; ``thumbnail`` is relative to the report folder, or None."""

    thumbnail: str | None
    title: str
    error: str
    correct: bool | None
    """Whether the predicted label is the true one (None for coordinate models)."""
    source: str
    """The original image's file name, or why it could not be shown."""


def pick_examples(predictions: pd.DataFrame, n: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    """The ``n`` lowest-error, ``n`` highest-error and ``n`` random (seeded) predictions."""
    p = predictions[pd.to_numeric(predictions["error_km"], errors="coerce").notna()]
    n = max(0, min(n, len(p)))
    return {
        "best": p.sort_values("error_km", kind="stable").head(n),
        "worst": p.sort_values("error_km", kind="stable", ascending=False).head(n),
        "random": p.sample(n, random_state=seed) if n else p.head(0),
    }


def describe(row: pd.Series) -> tuple[str, str, bool | None]:
    """``("Predicted: X  True: Y", "error N km", correct)`` for one prediction row.

    X and Y are label names where known, else coordinates rounded to 0.01°.
    """
    true_label, pred_label = row.get("true_label"), row.get("pred_label")
    has_true, has_pred = _present(true_label), _present(pred_label)
    truth = str(true_label) if has_true else _coords(row["lat"], row["lon"])
    guess = str(pred_label) if has_pred else _coords(row["pred_lat"], row["pred_lon"])
    correct = truth == guess if has_true and has_pred else None
    return f"Predicted: {guess}  True: {truth}", f"error {format_km(row['error_km'])} km", correct


def format_km(km: float) -> str:
    """A distance for captions: one decimal below 10 km, whole kilometres above."""
    km = float(km)
    return f"{km:.1f}" if km < 10 else f"{km:,.0f}"


def _present(value: object) -> bool:
    return value is not None and not pd.isna(value)


def _coords(lat: float, lon: float) -> str:
    return f"{float(lat):.2f}, {float(lon):.2f}"


def write_examples(rows: pd.DataFrame, report_dir: Path, prefix: str) -> list[Example]:
    """Write a ≤256 px JPEG thumbnail per row under ``report_dir/thumbs`` and caption each."""
    folder = report_dir / "thumbs"
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for i, (_, row) in enumerate(rows.iterrows()):
        title, error, correct = describe(row)
        image_path = Path(str(row["image"]))
        try:
            image = open_image(image_path)
        except BadImageError as exc:
            examples.append(Example(None, title, error, correct, f"image unavailable: {exc}"))
            continue
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        relative = f"thumbs/{prefix}_{i:02d}.jpg"
        image.save(report_dir / relative, format="JPEG", quality=85)
        examples.append(Example(relative, title, error, correct, image_path.name))
    return examples
