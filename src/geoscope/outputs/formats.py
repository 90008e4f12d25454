"""Predictions on paper: the readable table, strict JSON, and resumable CSV, GeoJSON and JSONL files.

Everything here renders the record of ``Prediction.to_dict()`` (keys may be absent for old
bundles) and nothing else, so every output says the same. A record holding NaN or infinity
is never written as such: :func:`checked_record` turns it into an error record.

Files written by ``geoscope predict -o`` grow one chunk at a time and survive a kill; the same
command run again reads back which images are done and answers only the others:

- ``.jsonl`` (or ``.ndjson``): one record per line, the same object ``--json`` prints.
- ``.csv``: one row per image (per place with ``--views``), what a spreadsheet user sorts and
  filters: the answer (its name, lat, lon, probability, place, region, country, the label it came
  from, its expected GeoScore), coverage, the top of each level of the hierarchy, P(answer within N
  km), then guesses 1…k by probability as ``name_1, lat_1, lon_1, probability_1, label_1``…; UTF-8
  with a byte-order mark (so Excel reads accented names right); line breaks inside a name are
  written as ``\\n``.
- ``.geojson``: an RFC 7946 FeatureCollection, one Point feature (lon, lat) per image at its
  answer, properties ``image, name, label, place, region, country, probability`` (the answer's) plus
  the record's own keys (``answer``, ``guesses`` with all k guesses, ``levels``, ``in_coverage``,
  ``confidence``, ``warnings``); an image that could not be answered has a null geometry and its
  ``error``. One document cannot be appended to, so while a run is going a journal
  ``<name>.journal.jsonl`` beside it holds the records and the GeoJSON is re-rendered from
  it atomically after each chunk (less often once rendering would cost over a tenth of the
  run); when the run completes the journal is removed.

Appending a chunk is one ``write`` followed by ``fsync``: a kill leaves at most a cut last
line, which the next run drops (and answers again) before appending.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import time
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from ..errors import GeoscopeError, one_line, quote_name
from ..fileio import atomic_write_text, check_writable

FORMATS = {".csv": "csv", ".geojson": "geojson", ".jsonl": "jsonl", ".ndjson": "jsonl"}
"""Output formats by file suffix."""

NON_FINITE = "the model answered a non-finite number (NaN or infinity): its bundle may be broken"
_FLAT_ANSWER_KEYS = ("name", "label", "place", "region", "country", "probability")


# --- strict JSON ---------------------------------------------------------------------------------

def strict_json(obj: Any, *, indent: int | None = None, ascii_only: bool = False) -> str:
    """JSON every parser accepts: NaN and infinity raise ``ValueError`` instead of becoming bare tokens."""
    return json.dumps(obj, allow_nan=False, ensure_ascii=ascii_only, indent=indent, default=_plain)


def _plain(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def checked_record(record: dict) -> dict:
    """``record`` when it is strict JSON, else an error record for its image (a NaN never reaches a file)."""
    try:
        strict_json(record)
    except (ValueError, TypeError):
        kept = {k: record[k] for k in ("image", "views") if k in record}
        return {**kept, "error": f"{quote_name(record.get('image', '?'))}: {NON_FINITE}", "answer": None,
                "guesses": []}
    return record


# --- the readable table --------------------------------------------------------------------------

def percent(p: float) -> str:
    """A probability as people read it: ``97 %``, ``4.2 %``, ``0.3 %``."""
    value = 100 * float(p)
    if value >= 99.95:
        return "100 %"
    return f"{value:.0f} %" if 9.95 <= value < 99.5 else f"{value:.1f} %"


def display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal (wide East Asian characters count 2, combining marks 0)."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def _ljust(text: str, width: int) -> str:
    return text + " " * max(0, width - display_width(text))


def hierarchy_line(record: dict) -> str | None:
    """``United Kingdom 97 % → England 97 % → Croydon 12 %``: the answer's path down the hierarchy, as the
    answer states it (a step the model has no label in is named without a probability); ``None`` without it."""
    steps = (record.get("answer") or {}).get("hierarchy") or []
    parts = [one_line(str(step.get("name", ""))) + ("" if step.get("probability") is None
                                                    else f" {percent(step['probability'])}")
             for step in steps if step.get("name")]
    return " → ".join(parts) or None


def confidence_line(record: dict) -> str | None:
    """``P(within 25 km) 41 % · 200 km 83 %``, or ``None`` without ``confidence``."""
    confidence = record.get("confidence") or {}
    items = sorted(confidence.items(), key=lambda kv: _as_number(kv[0]))
    if not items:
        return None
    (first_km, first_p), *rest = items
    return " · ".join([f"P(within {first_km} km) {percent(first_p)}", *(f"{km} km {percent(p)}" for km, p in rest)])


def _as_number(text: object) -> float:
    try:
        return float(str(text))
    except ValueError:
        return math.inf


OUTSIDE = "outside what this model knows: the answer and guesses below are the most similar of the places it knows"


def outside_line(record: dict) -> str:
    """The warning for a photo out of coverage, saying why where the record does ("… knows (it resembles United
    States, but none of the regions of it the model was trained on (…)): the answer …")."""
    reason = record.get("coverage_reason")
    if not reason:
        return OUTSIDE
    head, _, tail = OUTSIDE.partition(":")
    return f"{head} ({one_line(str(reason))}):{tail}"


def answer_line(record: dict) -> str | None:
    """``answer: Croydon, England, United Kingdom (51.3700, -0.1000) · expected GeoScore 4,210``."""
    answer = record.get("answer")
    if not answer:
        return None
    where = f"({answer.get('lat', math.nan):.4f}, {answer.get('lon', math.nan):.4f})"
    score = answer.get("expected_geoscore")
    return f"answer: {one_line(str(answer.get('name', '')))} {where}" + \
        ("" if score is None else f" · expected GeoScore {score:,.0f}")


def render_table(record: dict) -> str:
    """The readable block for one record: title, the answer, its hierarchy, coverage warning, confidence, then
    the guesses by probability.

    Names are never cut: the place column is as wide as the longest name. Each guess is named after where it
    points; the one the answer names is marked.
    """
    image = quote_name(record.get("image", "?"))
    views = record.get("views")
    title = f"{len(views)} views of one place: {', '.join(quote_name(v) for v in views)}" if views else image
    lines = [title]
    warnings = [f"  warning: {one_line(str(w))}" for w in record.get("warnings") or []]
    if record.get("error"):
        return "\n".join([*lines, *warnings, f"  not answered: {one_line(str(record['error']))}"])
    if (answer := answer_line(record)) is not None:
        lines.append(f"  {answer}")
    if (hierarchy := hierarchy_line(record)) is not None:
        lines.append(f"  {hierarchy}")
    if record.get("in_coverage") is False:
        lines.append(f"  warning: {outside_line(record)}")
    lines += warnings
    if (confidence := confidence_line(record)) is not None:
        lines.append(f"  {confidence}")
    guesses = record.get("guesses") or []
    names = [one_line(str(g.get("name") or g.get("label", ""))) for g in guesses]
    chosen = str((record.get("answer") or {}).get("name", ""))
    width = max([display_width("guesses by probability"), *map(display_width, names)])
    lines.append(f"  {'#':>2}  {_ljust('guesses by probability', width)}  {'lat':>9}  {'lon':>10}  {'probability':>11}")
    for rank, (g, name) in enumerate(zip(guesses, names, strict=True), 1):
        mark = "  ← answer" if chosen and g.get("name") == chosen else ""
        lines.append(f"  {rank:>2}  {_ljust(name, width)}  {g.get('lat', math.nan):>9.4f}  "
                     f"{g.get('lon', math.nan):>10.4f}  {100 * g.get('probability', math.nan):>9.1f} %{mark}")
    evidence = record.get("evidence") or []
    if evidence:
        lines.append("  most like training photos at (similarity, km from the answer):")
        lines += [f"    {e.get('lat', math.nan):.4f}, {e.get('lon', math.nan):.4f}  "
                  f"{one_line(str(e.get('label', '')))}  ({e.get('similarity', math.nan):.2f}, "
                  f"{e.get('km_from_answer', math.nan):,.0f} km)"
                  + (f"  {quote_name(e['image'])}" if e.get("image") else "") for e in evidence]
    return "\n".join(lines)


def render_verdict(record: dict) -> str:
    """The readable block for one claim check (``Verdict.to_dict()``): the photo, the claim, the verdict and why,
    then the likelihood ratio and the calibrated probability."""
    from ..answer.verify import format_ratio

    views = record.get("views")
    lines = [f"{len(views)} views of one place: {', '.join(quote_name(v) for v in views)}" if views
             else quote_name(record.get("image", "?"))]
    claim = record.get("claim") or {}
    country = f" ({one_line(str(record['country']))})" if record.get("country") else ""
    lines.append(f"  claim: within {claim.get('km', math.nan):g} km of {claim.get('lat', math.nan):.4f}, "
                 f"{claim.get('lon', math.nan):.4f}{country}")
    lines += [f"  warning: {one_line(str(w))}" for w in record.get("warnings") or []]
    if record.get("error"):
        return "\n".join([*lines, f"  not checked: {one_line(str(record['error']))}"])
    lines.append(f"  verdict: {record.get('verdict')}")
    lines.append(f"  why: {one_line(str(record.get('reason', '')))}")
    if record.get("likelihood_ratio") is not None:
        within = f"P(within {claim.get('km', math.nan):g} km)"
        lines.append(f"  likelihood ratio {format_ratio(record['likelihood_ratio'])} · {within} "
                     f"{_small_percent(record.get('probability'))}, "
                     f"before the photo {_small_percent(record.get('prior_probability'))}")
    return "\n".join(lines)


def _small_percent(p: float | None) -> str:
    """A probability that may be tiny: ``41 %``, ``0.3 %``, ``0.004 %``."""
    if p is None:
        return "n/a"
    if 0 < p < 0.001:
        return f"{100 * p:.2g} %"
    return percent(p)


# --- GeoJSON features ----------------------------------------------------------------------------

def record_to_feature(record: dict) -> dict:
    """One RFC 7946 Point feature at the answer (null geometry when there is none; a record written before
    answers stood apart from guesses, read back from a journal, is placed at its first guess)."""
    answer = record.get("answer") if "answer" in record else next(iter(record.get("guesses") or []), None)
    properties: dict[str, Any] = {"image": record.get("image")}
    geometry = None
    if answer:
        properties.update({k: answer.get(k) for k in _FLAT_ANSWER_KEYS})  # every feature has the same columns
        properties["in_coverage"] = record.get("in_coverage")
        if answer.get("lat") is not None and answer.get("lon") is not None:
            geometry = {"type": "Point",
                        "coordinates": [round(float(answer["lon"]), 6), round(float(answer["lat"]), 6)]}
    properties.update({k: v for k, v in record.items() if k != "image"})
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def feature_to_record(feature: dict) -> dict:
    """Inverse of :func:`record_to_feature`."""
    properties = feature["properties"]
    flat = () if not properties.get("answer") and not properties.get("guesses") else \
        (*_FLAT_ANSWER_KEYS, "rank") if "answer" not in properties else _FLAT_ANSWER_KEYS  # rank: older records
    return {k: v for k, v in properties.items() if k not in flat}


def feature_collection(features_json: Iterable[str]) -> str:
    """A FeatureCollection document from features already written as JSON text."""
    body = ",\n".join(features_json)
    return '{"type": "FeatureCollection", "features": [\n' + body + ("\n" if body else "") + "]}\n"


# --- CSV rows ------------------------------------------------------------------------------------

CSV_LEAD = ("image", "views", "name", "lat", "lon", "probability", "place", "region", "country", "label",
            "expected_geoscore", "in_coverage", "coverage_score")
CSV_LEVELS = ("country", "region")
CSV_RADII = ("25", "200", "750")
CSV_GUESS = ("name", "lat", "lon", "probability", "label")
CSV_TAIL = ("coverage_reason", "warnings", "error")


def csv_header(top_k: int, records: Iterable[dict] = ()) -> list[str]:
    """Columns for ``top_k`` guesses; levels and radii beyond the usual ones are taken from ``records``."""
    levels, radii = list(CSV_LEVELS), list(CSV_RADII)
    for record in records:
        levels += [k for k in (record.get("levels") or {}) if k not in levels and k != "place"]
        radii += [str(k) for k in (record.get("confidence") or {}) if str(k) not in radii]
    radii.sort(key=_as_number)
    header = list(CSV_LEAD)
    for level in levels:
        header += [f"top_{level}", f"top_{level}_probability"]
    header += [f"p_within_{km}km" for km in radii]
    for rank in range(1, top_k + 1):
        header += [f"{column}_{rank}" for column in CSV_GUESS]
    return header + list(CSV_TAIL)


def csv_cell(value: Any) -> str:
    """One cell: numbers as they are, booleans ``true``/``false``, text on one line, ``None`` empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return one_line(str(value))


def csv_values(record: dict) -> dict[str, Any]:
    """Every CSV column this record fills, by name: the answer first, then the guesses."""
    values: dict[str, Any] = {"image": record.get("image"), "views": ";".join(map(str, record.get("views") or [])),
                              "in_coverage": record.get("in_coverage"),
                              "coverage_score": record.get("coverage_score"),
                              "coverage_reason": record.get("coverage_reason"),
                              "warnings": " | ".join(map(str, record.get("warnings") or [])),
                              "error": record.get("error")}
    answer = record.get("answer") or {}
    values.update({k: answer.get(k) for k in CSV_LEAD if k in answer})
    for rank, guess in enumerate(record.get("guesses") or [], 1):
        values.update({f"{k}_{rank}": guess.get(k) for k in CSV_GUESS})
    for level, ranked in (record.get("levels") or {}).items():
        if ranked:
            values[f"top_{level}"] = ranked[0].get("name")
            values[f"top_{level}_probability"] = ranked[0].get("probability")
    for km, p in (record.get("confidence") or {}).items():
        values[f"p_within_{km}km"] = p
    return values


def csv_text(rows: Iterable[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


# --- resumable output files ----------------------------------------------------------------------

class PredictionsFile(Protocol):
    """An output file of ``geoscope predict -o``: which images it holds, and appending more."""

    path: Path

    def __len__(self) -> int: ...

    def holds(self, image: str) -> bool:
        """Whether the answer for this image (the record's ``image``) is already in the file."""

    def write(self, records: list[dict]) -> None:
        """Append the records of one chunk, whole."""

    def close(self, *, complete: bool) -> None:
        """Finish writing (``complete``: every image asked for is in the file)."""


def open_predictions_file(path: str | os.PathLike[str], *, top_k: int) -> PredictionsFile:
    """The output file for ``-o``, by its suffix, with what an earlier run already wrote read back.

    Raises :class:`GeoscopeError` for an unknown suffix, an unwritable place, or an existing
    file that is not a geoscope predictions file of this shape.
    """
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise GeoscopeError(f"{quote_name(path)}: unknown output format; end the name in "
                            f"{', '.join(FORMATS)}")
    check_writable(path)
    if kind == "csv":
        return CsvFile(path, top_k)
    if kind == "geojson":
        return GeoJsonFile(path)
    return JsonlFile(path)


def utf8_safe(text: str) -> str:
    """``text`` with what UTF-8 cannot hold escaped: a file name that is not UTF-8 reaches Python with its bytes
    as lone surrogates, written ``\\udcff``; inside a JSON string that escape reads back as the same name."""
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def append_whole(path: Path, text: str) -> None:
    """Append ``text`` (UTF-8, :func:`utf8_safe`) whole, then flush it to disk; on a write error (a full disk) the
    file is cut back to where it was, so a chunk is whole or absent."""
    data = utf8_safe(text).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        before = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, before)
            raise GeoscopeError(f"{quote_name(path)}: cannot write ({exc.strerror or exc}); the chunk was not "
                                "added, rerun to continue") from None
    finally:
        os.close(fd)


def read_complete_lines(path: Path) -> list[str]:
    """The whole lines of a file written by :func:`append_whole`; a cut last line is dropped from the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # a line cut by a kill: remove it, it will be answered again
        with open(path, "r+b") as handle:
            handle.truncate(end)
    try:
        return data[:end].decode("utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise GeoscopeError(f"{quote_name(path)}: exists and is not a geoscope predictions file (not UTF-8); "
                            "write to another file") from None


def _parse_record(line: str, path: Path, number: int) -> dict:
    try:
        record = json.loads(line, parse_constant=_refuse_constant)
    except ValueError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("image"), str):
        raise GeoscopeError(f"{quote_name(path)}: line {number} is not a geoscope prediction record; "
                            "write to another file")
    return record


def _refuse_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


class JsonlFile:
    """``.jsonl``: one record per line, appended a chunk at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.images = {_parse_record(line, path, n)["image"]
                       for n, line in enumerate(read_complete_lines(path), 1) if line.strip()}

    def __len__(self) -> int:
        return len(self.images)

    def holds(self, image: str) -> bool:
        return image in self.images

    def write(self, records: list[dict]) -> None:
        append_whole(self.path, "".join(strict_json(r) + "\n" for r in records))
        self.images.update(r["image"] for r in records)

    def close(self, *, complete: bool) -> None:
        pass


class CsvFile:
    """``.csv``: one row per image; the header is fixed by the first chunk (or read back)."""

    def __init__(self, path: Path, top_k: int) -> None:
        self.path, self.top_k = path, top_k
        self.header: list[str] | None = None
        self.images: set[str] = set()
        lines = read_complete_lines(path)
        if not lines:
            return
        rows = list(csv.reader(lines))
        header = rows[0]
        if header[: len(CSV_LEAD)] != list(CSV_LEAD) or header[-len(CSV_TAIL):] != list(CSV_TAIL):
            raise GeoscopeError(f"{quote_name(path)}: exists and is not a geoscope predictions CSV; "
                                "write to another file")
        held = sum(column.startswith("probability_") for column in header)
        if top_k > held:
            raise GeoscopeError(f"{quote_name(path)} holds {held} guesses per image: rerun with --top-k {held} "
                                "or write to another file")
        for n, row in enumerate(rows[1:], 2):
            if len(row) != len(header):
                raise GeoscopeError(f"{quote_name(path)}: line {n} has {len(row)} fields, the header "
                                    f"{len(header)}; write to another file")
            self.images.add(row[0])
        self.header = header

    def __len__(self) -> int:
        return len(self.images)

    def holds(self, image: str) -> bool:
        return utf8_safe(one_line(image)) in self.images

    def write(self, records: list[dict]) -> None:
        text = ""
        if self.header is None:
            self.header = csv_header(self.top_k, records)
            text = "\ufeff" + csv_text([self.header])
        rows = []
        for record in records:
            values = csv_values(record)
            rows.append([csv_cell(values.get(column)) for column in self.header])
        append_whole(self.path, text + csv_text(rows))
        self.images.update(utf8_safe(one_line(r["image"])) for r in records)

    def close(self, *, complete: bool) -> None:
        if self.header is None and not self.path.exists():  # nothing was answered: still leave a valid file
            append_whole(self.path, "\ufeff" + csv_text([csv_header(self.top_k)]))


class GeoJsonFile:
    """``.geojson``: a journal of records beside it while running; the document re-rendered from it atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal = path.with_name(path.name + ".journal.jsonl")
        self.features: list[str] = []
        self.images: set[str] = set()
        self._render_seconds = 0.0
        self._rendered_at = 0.0
        self._dirty = False
        if self.journal.is_file():
            records = [_parse_record(line, self.journal, n)
                       for n, line in enumerate(read_complete_lines(self.journal), 1) if line.strip()]
            self._dirty = True  # the document may lag behind its journal
        else:
            records = self._read_document()  # continue from a finished document
        for record in records:
            self._add(record)

    def _read_document(self) -> list[dict]:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return []
        try:
            document = json.loads(self.path.read_text("utf-8"), parse_constant=_refuse_constant)
            return [feature_to_record(f) for f in document["features"]]
        except (ValueError, KeyError, TypeError):
            raise GeoscopeError(f"{quote_name(self.path)}: exists and is not a geoscope predictions GeoJSON; "
                                "write to another file") from None

    def _add(self, record: dict) -> None:
        self.features.append(strict_json(record_to_feature(record)))
        self.images.add(record["image"])

    def __len__(self) -> int:
        return len(self.images)

    def holds(self, image: str) -> bool:
        return image in self.images

    def write(self, records: list[dict]) -> None:
        if not self.journal.is_file() and self.features:  # the records of the finished document start it
            atomic_write_text(self.journal, utf8_safe("".join(
                strict_json(feature_to_record(json.loads(f))) + "\n" for f in self.features)))
        append_whole(self.journal, "".join(strict_json(r) + "\n" for r in records))
        for record in records:
            self._add(record)
        self._dirty = True
        if time.perf_counter() - self._rendered_at >= 10 * self._render_seconds:
            self.render()

    def render(self) -> None:
        """Write the whole FeatureCollection atomically."""
        start = time.perf_counter()
        try:
            atomic_write_text(self.path, utf8_safe(feature_collection(self.features)))
        except OSError as exc:
            raise GeoscopeError(f"{quote_name(self.path)}: cannot write ({exc.strerror or exc})") from None
        self._rendered_at = time.perf_counter()
        self._render_seconds = self._rendered_at - start
        self._dirty = False

    def close(self, *, complete: bool) -> None:
        if self._dirty or not self.path.is_file():
            self.render()
        if complete:
            self.journal.unlink(missing_ok=True)
