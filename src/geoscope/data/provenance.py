"""Where a dataset came from: a card a person reads and a record a program reads, beside its manifest.

Every manifest geoscope writes gets, in the same folder, a dataset card (``DATASET.md``) and
its machine-readable twin (``dataset.json``); a manifest named other than ``manifest.*``
gets ``<stem>.DATASET.md`` and ``<stem>.dataset.json``, so two manifests in one folder never
share a card. Both are written atomically. A command that derives a manifest from another
(``data split``, ``labels``) copies the parent's sources and steps forward and adds its own step.

The record (what :func:`read_dataset_card` returns) is a dict with these keys:

- ``format``: ``"geoscope-dataset"``; ``version``: 1.
- ``manifest``: the manifest's file name; ``written``: when (UTC, ISO 8601); ``geoscope``: version.
- ``images``, ``places``: row and place counts; ``bbox``: ``min_lat``, ``min_lon``, ``max_lat``,
  ``max_lon``; ``splits``: images per split, when the manifest has a ``split`` column.
- ``columns``: each column of the manifest and what it means.
- ``sources``: where the images came from, a list of dicts, each with ``kind`` (``folder``,
  ``csv``, ``streetview``, ``mapillary``, ``manifest`` for one geoscope did not write, or
  another provider name), ``location`` (the folder, CSV file, API endpoint or manifest),
  ``when`` (UTC), ``terms`` (the terms of use that apply, in one sentence) and any details
  the source adds (``region`` of a plan, fetch ``settings``, counts).
- ``steps``: how the manifest was made, oldest first, each a dict with ``step`` (``import-folder``,
  ``import-csv``, ``fetch``, ``split``, ``labels grid``, …), ``when``, ``manifest`` (the file it
  wrote) and its own details (``command``, options, counts).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from .. import __version__
from ..fileio import atomic_write_json, atomic_write_text
from ..geo.sphere import bounding_box
from .manifest import place_ids

FORMAT, VERSION = "geoscope-dataset", 1

TERMS = {
    "folder": "your own photos: you hold their rights; their EXIF GPS positions show where they were taken, "
              "so share them only with the consent of the people they show",
    "csv": "as stated by whoever made the CSV and its images (geoscope does not know them); check before sharing",
    "manifest": "unknown: this manifest was not written by geoscope, so its source and terms are not recorded",
}
"""Terms of use by kind of source; remote providers state their own (``Source.terms``)."""

COLUMNS = {
    "image": "path of the image file, relative to the manifest's folder (or absolute)",
    "lat": "latitude of the camera, WGS84 decimal degrees",
    "lon": "longitude of the camera, WGS84 decimal degrees",
    "location_id": "one id per physical place; the views of a place share it",
    "heading": "camera heading in degrees clockwise from north, where known",
    "capture_date": "when the image was taken (YYYY-MM-DD or YYYY-MM), where known",
    "split": "train, val or test: images of one place (or block) are never in two splits",
    "label": "index of the image's place label in the label table (-1: in no label)",
    "label_name": "name of the image's place label",
    "dataset": "the set the image comes from, in a manifest combined from several",
    "source": "the provider the image was fetched from",
    "source_id": "the provider's id of the image or panorama",
    "point_id": "the plan point the image was fetched for",
    "plan_lat": "latitude of the plan point the image was fetched for",
    "plan_lon": "longitude of the plan point the image was fetched for",
    "cell_id": "grid cell of the plan point",
    "cell": "name of the plan point's grid cell (its largest gazetteer place)",
    "city_id": "city label of the plan point (suburbs merged into their city)",
    "city": "name of the plan point's city label",
    "place_id": "gazetteer place the plan point was sampled around",
    "place": "name of that gazetteer place",
    "original_image": "the CSV's own 'image' column, kept when another column held the paths",
    "original_lat": "the CSV's own 'lat' column, kept when another column held the latitudes",
    "original_lon": "the CSV's own 'lon' column, kept when another column held the longitudes",
}


def card_paths(manifest_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The card (``DATASET.md``) and record (``dataset.json``) of a manifest."""
    path = Path(manifest_path)
    prefix = "" if path.stem == "manifest" else f"{path.stem}."
    return path.with_name(f"{prefix}DATASET.md"), path.with_name(f"{prefix}dataset.json")


def now() -> str:
    """The current UTC time, to the second, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_dataset_card(manifest_path: str | os.PathLike[str], frame: pd.DataFrame, source: dict | list[dict], *,
                       step: dict | None = None) -> Path:
    """Describe a manifest just made from ``source`` (a dict: ``kind``, ``location``, ``terms``, details;
    or a list of them, for a manifest combined from several sources).

    ``terms`` defaults to the known terms of the source's kind; ``when`` to now. ``step`` (default:
    ``{"step": "import-" + kind}`` of the first source) records the command that made it. Returns the card's path.
    """
    when = now()
    sources = [{"when": when, **one} for one in ([source] if isinstance(source, dict) else source)]
    for one in sources:
        one.setdefault("terms", TERMS.get(str(one.get("kind")), "not recorded"))
    step = {"step": f"import-{sources[0].get('kind') if sources else 'nothing'}", **(step or {})}
    return _write(manifest_path, frame, sources, [], step, when)


def derive_dataset_card(parent_path: str | os.PathLike[str], manifest_path: str | os.PathLike[str],
                        frame: pd.DataFrame, step: dict) -> Path:
    """Describe a manifest derived from ``parent_path``: the parent's sources and steps, then ``step``."""
    parent = read_dataset_card(parent_path)
    if parent is None:
        sources = [{"kind": "manifest", "location": str(Path(parent_path).absolute()), "terms": TERMS["manifest"]}]
        steps: list[dict] = []
    else:
        sources, steps = list(parent.get("sources", [])), list(parent.get("steps", []))
    return _write(manifest_path, frame, sources, steps, step, now())


def read_dataset_card(manifest_path: str | os.PathLike[str]) -> dict | None:
    """The record of a manifest (see the module docstring for its keys), or None when it has none.

    A record that cannot be read is reported once on stderr and treated as absent.
    """
    _, record = card_paths(manifest_path)
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"geoscope: warning: {record}: unreadable dataset record ignored ({exc})", file=sys.stderr)
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        print(f"geoscope: warning: {record}: not a geoscope dataset record; ignored", file=sys.stderr)
        return None
    return data


def _write(manifest_path: str | os.PathLike[str], frame: pd.DataFrame, sources: list[dict], steps: list[dict],
           step: dict, when: str) -> Path:
    path = Path(manifest_path)
    record = {"format": FORMAT, "version": VERSION, "manifest": path.name, "written": when,
              "geoscope": __version__, **_summary(frame),
              "columns": {str(c): COLUMNS.get(str(c), "not a geoscope column (kept as it was)") for c in frame.columns},
              "sources": sources,
              "steps": [*steps, {"when": when, "manifest": path.name, **step}]}
    card, twin = card_paths(path)
    atomic_write_json(twin, record)
    atomic_write_text(card, render_card(record))
    return card


def _summary(frame: pd.DataFrame) -> dict:
    out: dict = {"images": len(frame), "places": 0, "bbox": None}
    if len(frame) and {"lat", "lon"} <= set(frame.columns):
        out["places"] = int(place_ids(frame).nunique())
        lat_min, lon_min, lat_max, lon_max = bounding_box(frame["lat"], frame["lon"])
        out["bbox"] = {"min_lat": lat_min, "min_lon": lon_min, "max_lat": lat_max, "max_lon": lon_max}
    if "split" in frame:
        out["splits"] = {str(k): int(v) for k, v in frame["split"].value_counts().items()}
    return out


def render_card(record: dict) -> str:
    """The Markdown dataset card of a record."""
    box = record.get("bbox")
    extent = (f"lat {box['min_lat']:.4f} … {box['max_lat']:.4f}, lon {box['min_lon']:.4f} … {box['max_lon']:.4f}"
              if box else "no coordinates")
    lines = [f"# Dataset: {record['manifest']}", "",
             f"{record['images']:,} images at {record['places']:,} places; extent {extent}.",
             f"Written {record['written']} by geoscope {record['geoscope']}."]
    if record.get("splits"):
        lines.append("Splits: " + ", ".join(f"{k} {v:,}" for k, v in record["splits"].items()) + ".")
    lines += ["", "## Where the images came from", ""]
    for source in record["sources"]:
        details = {k: v for k, v in source.items() if k not in ("kind", "location", "when", "terms")}
        lines.append(f"- **{source.get('kind')}** `{source.get('location', '?')}`, {source.get('when', 'when unknown')}"
                     + (f" ({_details(details)})" if details else ""))
        lines.append(f"  Terms of use: {source.get('terms', 'not recorded')}.")
    lines += ["", "## How this manifest was made", ""]
    for number, step in enumerate(record["steps"], 1):
        details = {k: v for k, v in step.items() if k not in ("step", "when", "manifest")}
        lines.append(f"{number}. `{step.get('step')}` → `{step.get('manifest')}`, {step.get('when')}"
                     + (f": {_details(details)}" if details else ""))
    lines += ["", "## Columns", "", "| column | meaning |", "|---|---|"]
    lines += [f"| `{c}` | {meaning} |" for c, meaning in record["columns"].items()]
    lines += ["", "## Care", "",
              "Street-level photos can show people, number plates and homes. Keep to the terms above, blur "
              "or remove what identifies people before sharing, and share coordinates only as precisely as needed.",
              ""]
    return "\n".join(lines)


def _details(values: dict) -> str:
    return "; ".join(f"{k}: {json.dumps(v, default=str) if isinstance(v, dict | list) else v}"
                     for k, v in values.items())
