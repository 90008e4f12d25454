"""Build a manifest from a user's own data: a folder of geotagged photos, or any CSV.

Image paths are stored relative to the folder of the manifest being written (so the
manifest and its images move together), or absolute when they share no folder but the root.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from ..errors import GeoscopeError, ManifestError
from ..images import is_image_path
from .manifest import STRING_COLUMNS, Manifest, normalise, validate_frame

GPS_IFD = 0x8825
EXIF_IFD = 0x8769
DATETIME_ORIGINAL = 0x9003
GPS_LAT_REF, GPS_LAT, GPS_LON_REF, GPS_LON = 1, 2, 3, 4
GPS_STATUS, GPS_IMG_DIRECTION, GPS_DATE_STAMP = 9, 17, 29

IMAGE_COLUMNS = ("image", "image_path", "img", "path", "filepath", "file_path", "file",
                 "filename", "file_name")
LAT_COLUMNS = ("lat", "latitude", "gps_lat", "gps_latitude")
LON_COLUMNS = ("lon", "lng", "long", "longitude", "gps_lon", "gps_lng", "gps_longitude")
FOLDER_COLUMNS = ("image", "lat", "lon", "heading", "capture_date")

Skipped = list[tuple[Path, str]]


def import_folder(
    folder: str | os.PathLike[str], *, output: str | os.PathLike[str] | None = None
) -> tuple[pd.DataFrame, Skipped]:
    """Manifest rows for every photo under ``folder`` (recursively) that carries EXIF GPS.

    Reads latitude/longitude (degrees-minutes-seconds rationals with N/S/E/W refs) and,
    when present, ``GPSImgDirection`` as ``heading`` and ``DateTimeOriginal`` as
    ``capture_date`` (YYYY-MM-DD). Paths are relative to ``output``'s folder (default:
    ``folder``). Returns the table and ``(path, reason)`` for each image left out.
    """
    root = Path(folder)
    if not root.is_dir():
        raise GeoscopeError(f"{root}: not a folder")
    base = Path(output).absolute().parent if output is not None else root.absolute()
    rows: list[dict] = []
    skipped: Skipped = []
    for path in _image_files(root):
        try:
            row = read_exif_location(path)
        except GeoscopeError as exc:
            skipped.append((path, str(exc)))
            continue
        row["image"] = portable_path(path, base)
        rows.append(row)
    frame = normalise(pd.DataFrame(rows, columns=list(FOLDER_COLUMNS)))[0]
    return frame, skipped


def read_exif_location(path: str | os.PathLike[str]) -> dict:
    """``lat``, ``lon``, ``heading`` and ``capture_date`` from one photo's EXIF.

    Raises :class:`GeoscopeError` with the reason when the file cannot be read or carries
    no usable GPS position; ``heading`` and ``capture_date`` are None when absent.
    """
    try:
        with Image.open(path) as image:
            exif = image.getexif()
            gps = dict(exif.get_ifd(GPS_IFD))
            taken = exif.get_ifd(EXIF_IFD).get(DATETIME_ORIGINAL)
    except UnidentifiedImageError:
        raise GeoscopeError("not a readable image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise GeoscopeError(f"cannot read ({exc})") from None
    if GPS_LAT not in gps or GPS_LON not in gps:
        raise GeoscopeError("no GPS position in EXIF")
    if _text(gps.get(GPS_STATUS)) == "V":
        raise GeoscopeError("GPS fix marked void in EXIF")
    lat = _signed(_degrees(gps[GPS_LAT]), _text(gps.get(GPS_LAT_REF)), "S")
    lon = _signed(_degrees(gps[GPS_LON]), _text(gps.get(GPS_LON_REF)), "W")
    if not (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180):
        raise GeoscopeError(f"GPS position out of range ({lat:g}, {lon:g})")
    if lat == 0 and lon == 0:
        raise GeoscopeError("GPS position is 0, 0 (camera had no fix)")
    heading = _number(gps[GPS_IMG_DIRECTION]) if GPS_IMG_DIRECTION in gps else math.nan
    return {
        "lat": lat,
        "lon": lon,
        "heading": heading % 360.0 if math.isfinite(heading) and 0 <= heading <= 360 else None,
        "capture_date": _date(taken) or _date(gps.get(GPS_DATE_STAMP)),
    }


def import_csv(
    csv: str | os.PathLike[str],
    *,
    image_col: str | None = None,
    lat_col: str | None = None,
    lon_col: str | None = None,
    root: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
) -> Manifest:
    """A validated manifest from a CSV with any names for its image, latitude and longitude.

    Columns are found by common names (image/path/file/filename, lat/latitude,
    lon/lng/long/longitude) unless named. Image paths in the CSV are relative to ``root``
    (default: the CSV's folder); in the result they are relative to ``output``'s folder
    when given. Other columns are kept; one already called ``image``/``lat``/``lon`` that
    is not the chosen one is kept as ``original_<name>``.
    """
    csv = Path(csv)
    if not csv.is_file():
        raise ManifestError(f"{csv}: CSV file not found")
    header = list(_read_csv(csv, nrows=0).columns)
    chosen = {
        "image": _pick(csv, header, image_col, IMAGE_COLUMNS, "image path", "--image-col"),
        "lat": _pick(csv, header, lat_col, LAT_COLUMNS, "latitude", "--lat-col"),
        "lon": _pick(csv, header, lon_col, LON_COLUMNS, "longitude", "--lon-col"),
    }
    if len(set(chosen.values())) < len(chosen):
        raise ManifestError(f"{csv}: one column is chosen for two of image, lat and lon "
                            f"({', '.join(f'{k}={v}' for k, v in chosen.items())})")
    text_columns = set(STRING_COLUMNS) | {chosen["image"]}
    frame = _read_csv(csv, dtype={c: "string" for c in header if c in text_columns})
    renames = {c: f"original_{c}" for c in chosen if c in frame and chosen[c] != c}
    renames.update({source: target for target, source in chosen.items()})
    frame, problems = normalise(frame.rename(columns=renames))
    frame["image"] = frame["image"].map(lambda p: p.strip() if isinstance(p, str) else p)
    source_root = Path(root) if root is not None else csv.parent
    problems += validate_frame(frame, source_root)
    if problems:
        raise ManifestError(f"{csv}: " + "; ".join(problems))
    if output is None:
        return Manifest(frame.reset_index(drop=True), source_root.resolve())
    target_root = Path(output).absolute().parent
    frame = rebase_images(frame, source_root, target_root)
    return Manifest(frame.reset_index(drop=True), target_root.resolve())


def rebase_images(
    frame: pd.DataFrame, from_root: str | os.PathLike[str], to_root: str | os.PathLike[str]
) -> pd.DataFrame:
    """A copy of ``frame`` with relative image paths moved from ``from_root`` to ``to_root``."""
    source, target = Path(from_root).absolute(), Path(to_root).absolute()
    out = frame.copy()
    if source == target:
        return out
    out["image"] = [
        portable_path(source / p, target) if isinstance(p, str) and p and not Path(p).is_absolute()
        else p
        for p in frame["image"]
    ]
    return out


def portable_path(path: str | os.PathLike[str], base: str | os.PathLike[str]) -> str:
    """``path`` relative to ``base`` with forward slashes; absolute if they share only the root."""
    absolute, start = os.path.abspath(path), os.path.abspath(base)
    try:
        common = os.path.commonpath([absolute, start])
        relative = os.path.relpath(absolute, start)
    except ValueError:  # different drives on Windows
        return Path(absolute).as_posix()
    if Path(common) == Path(common).parent:  # only the filesystem root in common
        return Path(absolute).as_posix()
    return Path(relative).as_posix()


def _image_files(root: Path) -> list[Path]:
    """Image files under ``root``, sorted, skipping hidden files and folders."""
    return sorted(
        p for p in root.rglob("*")
        if is_image_path(p) and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _number(value: object) -> float:
    """A float from an EXIF number: IFDRational, int, float or a raw ``(num, den)`` pair."""
    if isinstance(value, tuple) and len(value) == 2:
        num, den = (float(v) for v in value)
        return num / den if den else math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, ZeroDivisionError):
        return math.nan


def _degrees(value: object) -> float:
    """Decimal degrees from an EXIF (degrees, minutes, seconds) triple or a single number."""
    parts = [_number(v) for v in value] if isinstance(value, list | tuple) else [_number(value)]
    if not parts or len(parts) > 3:
        return math.nan
    return sum(p / 60.0**i for i, p in enumerate(parts))


def _signed(degrees: float, ref: str | None, negative: str) -> float:
    if ref is None:
        return degrees
    return -abs(degrees) if ref == negative else abs(degrees)


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="ignore")
    if not isinstance(value, str):
        return None
    return value.strip("\x00 ").upper() or None


_DATE = re.compile(r"^\s*(\d{4})[:\-/](\d{2})[:\-/](\d{2})")


def _date(value: object) -> str | None:
    """``YYYY-MM-DD`` from an EXIF date or date-time string; None when absent or blank."""
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="ignore")
    match = _DATE.match(value) if isinstance(value, str) else None
    if not match:
        return None
    year, month, day = (int(g) for g in match.groups())
    if year < 1800 or not 1 <= month <= 12 or not 1 <= day <= 31:
        return None
    return f"{year:04d}-{month:02d}-{day:02d}"


def _read_csv(csv: Path, **kwargs: object) -> pd.DataFrame:
    try:
        return pd.read_csv(csv, **kwargs)  # type: ignore[arg-type]
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ManifestError(f"{csv}: cannot parse as a table ({first})") from None


def _pick(csv: Path, header: Sequence[str], given: str | None, names: Sequence[str],
          what: str, flag: str) -> str:
    """The column holding ``what``: the one named by ``flag``, else the one common name found."""
    found = ", ".join(map(str, header))
    if given is not None:
        if given not in header:
            raise ManifestError(f"{csv}: no column {given!r} for the {what} (found: {found})")
        return given
    matches = [c for c in header if _key(c) in names]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ManifestError(f"{csv}: no {what} column (found: {found}); name it with {flag}")
    raise ManifestError(f"{csv}: several columns could be the {what} ({', '.join(matches)}); "
                        f"pick one with {flag}")


def _key(column: object) -> str:
    return re.sub(r"[\s\-]+", "_", str(column).strip().lower())
