"""Fetch a plan's images from a remote source into a folder with a manifest; resumable.

Every finished point is appended to ``fetch.jsonl`` (flushed and fsynced) before the
next is counted, images are written atomically, and ``manifest.csv`` is rebuilt from the
journal, so a run killed at any moment loses nothing: a rerun skips finished points,
never downloads an image that is already on disk, and removes stray temporary files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import BadImageError
from ..fileio import atomic_write_bytes
from ..images import open_image
from .manifest import write_manifest
from .plan import PLAN_FILE, plan_points_path, read_plan
from .provenance import read_dataset_card, write_dataset_card
from .sources import Located, Source, View
from .sources.http import (
    AuthError,
    BudgetExhausted,
    FetchError,
    HttpClient,
    NetworkError,
    Stopped,
)

JOURNAL = "fetch.jsonl"
MANIFEST = "manifest.csv"
IMAGES = "images"
LOCK = ".fetch.lock"
JOURNAL_VERSION = 1
MANIFEST_EVERY_S = 30.0
MANIFEST_COLUMNS = ("image", "lat", "lon", "location_id", "heading", "capture_date", "source",
                    "source_id", "point_id", "plan_lat", "plan_lon")


@dataclass
class FetchResult:
    """What a fetch run did, and where the dataset now stands."""

    points: int
    finished: int
    with_imagery: int
    no_imagery: int
    duplicates: int
    failed: int
    images: int
    new_images: int
    requests: int
    budget_hit: bool
    manifest: Path
    failures: list[str] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return self.points - self.finished


class _Journal:
    """The append-only record of finished points; the one source of truth for resume."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[int, dict] = {}  # the last record of each point wins
        self.header: dict | None = None
        self._lock = threading.Lock()
        if path.exists():
            self._load()
        self._handle = open(path, "ab")  # noqa: SIM115 - held for the whole run

    def _load(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a line cut short by a kill: drop it
            with open(self.path, "r+b") as handle:
                handle.truncate(end)
                handle.flush()
                os.fsync(handle.fileno())
        for number, line in enumerate(data[:end].splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise FetchError(f"{self.path}: line {number} is corrupt; move the file away "
                                 "to start over (images already on disk are reused)") from None
            if record.get("type") == "header":
                self.header = self.header or record
            elif record.get("type") == "point":
                self.entries[record["point_id"]] = record

    def append(self, record: dict) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            self._handle.write(line)
            self._handle.flush()
            os.fsync(self._handle.fileno())
            if record.get("type") == "point":
                self.entries[record["point_id"]] = record

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.entries.values())

    def close(self) -> None:
        self._handle.close()


def plan_fingerprint(points: pd.DataFrame) -> str:
    """A short hash of a plan's ids and coordinates, to refuse resuming from another plan."""
    digest = hashlib.sha256()
    digest.update(points["point_id"].to_numpy(dtype=np.int64).tobytes())
    digest.update(np.round(points[["lat", "lon"]].to_numpy(dtype=np.float64), 6).tobytes())
    return digest.hexdigest()[:16]


def image_relpath(name: str) -> str:
    """Where an image lives under the output folder: ``images/<2 hex>/<name>``."""
    shard = hashlib.sha1(name.encode("utf-8")).hexdigest()[:2]
    return f"{IMAGES}/{shard}/{name}"


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process guard
        yield
        return
    with open(out / LOCK, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FetchError(f"{out}: another fetch is writing to this folder") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove_partials(out: Path) -> int:
    removed = 0
    for path in [*out.glob(".*.part"), *(out / IMAGES).glob("*/.*.part")]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


def fetch(plan: str | os.PathLike[str], out_dir: str | os.PathLike[str], source: Source,
          client: HttpClient, *, workers: int = 8,
          progress: bool = True, log: Callable[[str], None] | None = None) -> FetchResult:
    """Download the imagery of every point of ``plan`` into ``out_dir`` and write its manifest.

    The source's settings (headings, radius, image options) are recorded on the first run
    and must match on a rerun. Stops early, keeping all finished work, when the client's budget
    is spent. Raises :class:`AuthError` or :class:`NetworkError` (after writing the
    manifest) when the key is refused or the service cannot be reached.
    """
    if workers < 1:
        raise FetchError(f"need at least one worker (got {workers})")
    points = read_plan(plan)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FetchError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    settings = {"source": source.name, **source.settings}
    say = log or _default_log
    with _exclusive(out):
        _remove_partials(out)
        journal = _Journal(out / JOURNAL)
        try:
            _check_header(journal, settings, plan_fingerprint(points), out)
            try:
                return _run(points, out, source, client, journal, workers, progress, say)
            finally:
                _describe(out, plan, source, settings)
        finally:
            journal.close()


def _describe(out: Path, plan: str | os.PathLike[str], source: Source, settings: dict) -> None:
    """Write the dataset card of the fetched manifest: provider, its terms, plan and region, settings."""
    manifest = out / MANIFEST
    if not manifest.is_file():
        return
    points = plan_points_path(plan).absolute()
    info = {"kind": source.name, "location": getattr(source, "base_url", source.name),
            "terms": getattr(source, "terms", "see the provider's terms of use"), "plan": str(points),
            "settings": settings}
    try:
        plan_meta = json.loads((points.parent / PLAN_FILE).read_text(encoding="utf-8"))
        info["region"] = plan_meta.get("region_name") or plan_meta.get("region")
    except (OSError, ValueError, AttributeError):
        pass
    before = read_dataset_card(manifest)
    if before and before.get("sources") and before["sources"][0].get("kind") == source.name \
            and before["sources"][0].get("when"):
        info["when"] = before["sources"][0].get("when")  # a resumed fetch keeps the first run's date
    write_dataset_card(manifest, pd.read_csv(manifest), info, step={"step": "fetch", "plan": str(points)})


def _default_log(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def _check_header(journal: _Journal, settings: dict, fingerprint: str, out: Path) -> None:
    if journal.header is None:
        journal.append({"type": "header", "version": JOURNAL_VERSION, "plan": fingerprint,
                        "settings": settings})
        return
    if journal.header.get("plan") != fingerprint:
        raise FetchError(f"{out} was fetched from another plan; use a new output folder")
    before = journal.header.get("settings", {})
    changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
    if changed:
        what = ", ".join(f"{k} {before.get(k)!r} → {settings.get(k)!r}" for k in changed)
        raise FetchError(f"{out} was fetched with other settings ({what}); "
                         "rerun with the same ones or use a new output folder")


class _Run:
    """The shared state of one run: claims on panoramas or images, counters, the stop flag."""

    def __init__(self, out: Path, source: Source, client: HttpClient, journal: _Journal) -> None:
        self.out, self.source, self.client, self.journal = out, source, client, journal
        self.claims: dict[str, int] = {}
        self.lock = threading.Lock()
        self.new_images = 0
        self.finished: set[int] = set()
        for entry in journal.snapshot():
            views = entry.get("views", [])
            if all((out / v["image"]).is_file() for v in views):  # else fetch what went missing
                self.finished.add(entry["point_id"])
            for view in views:
                self.claims.setdefault(view["claim"], entry["point_id"])

    def process(self, point_id: int, lat: float, lon: float) -> str:
        if self.client.stop.is_set():
            raise Stopped
        located: Located = self.source.locate(lat, lon, point_id)
        if located.location_id is None or not located.views:
            self.journal.append({"type": "point", "point_id": point_id, "status": "none"})
            return "none"
        with self.lock:
            mine = [v for v in located.views if self.claims.get(v.claim, point_id) == point_id]
            for view in mine:
                self.claims[view.claim] = point_id
        if not mine:
            self.journal.append({"type": "point", "point_id": point_id, "status": "duplicate",
                                 "location_id": located.location_id})
            return "duplicate"
        try:
            rows = [row for row in (self._view(v) for v in mine) if row is not None]
        except BaseException:
            with self.lock:
                for view in mine:
                    if self.claims.get(view.claim) == point_id:
                        del self.claims[view.claim]
            raise
        status = "done" if rows else "none"
        self.journal.append({"type": "point", "point_id": point_id, "status": status,
                             "location_id": located.location_id, "views": rows})
        return status

    def _view(self, view: View) -> dict | None:
        rel = image_relpath(view.image)
        path = self.out / rel
        if not path.is_file():
            data = self.source.download(view)
            if data is None:
                return None
            try:
                open_image(data)
            except BadImageError:
                raise FetchError(f"{self.client.scrub(view.url)}: the answer is not a readable image") from None
            atomic_write_bytes(path, data)
            with self.lock:
                self.new_images += 1
        return {"image": rel, "lat": view.lat, "lon": view.lon, "heading": view.heading,
                "capture_date": view.capture_date, "source_id": view.source_id, "claim": view.claim}


def _run(points: pd.DataFrame, out: Path, source: Source, client: HttpClient, journal: _Journal,
         workers: int, progress: bool, say: Callable[[str], None]) -> FetchResult:
    from tqdm import tqdm

    run = _Run(out, source, client, journal)
    todo = points[~points["point_id"].isin(run.finished)]
    failures: list[str] = []
    fatal: BaseException | None = None
    budget_hit = False
    last_write = time.monotonic()
    bar = tqdm(total=len(points), initial=len(points) - len(todo), unit="pt", disable=not progress,
               desc=f"fetch {source.name}", file=sys.stderr, dynamic_ncols=True)
    jobs = iter(zip(todo["point_id"].tolist(), todo["lat"].tolist(), todo["lon"].tolist(), strict=True))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="geoscope-fetch")
    running: set[Future] = set()
    try:
        while True:
            while not client.stop.is_set() and len(running) < 2 * workers:
                job = next(jobs, None)
                if job is None:
                    break
                running.add(pool.submit(run.process, *job))
            if not running:
                break
            done, running = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    future.result()
                    bar.update(1)
                except BudgetExhausted:
                    budget_hit = True
                    client.stop.set()
                except Stopped:
                    pass
                except (AuthError, NetworkError) as exc:
                    fatal = fatal or exc
                    client.stop.set()
                except OSError as exc:  # the disk, not the service: no point can succeed
                    fatal = fatal or FetchError(f"cannot write to {out}: {exc.strerror or exc}")
                    client.stop.set()
                except (FetchError, BadImageError) as exc:
                    failures.append(client.scrub(str(exc)))
                    if len(failures) <= 3:
                        say(f"geoscope: warning: {failures[-1]}")
            if time.monotonic() - last_write > MANIFEST_EVERY_S:
                _write(points, journal, out, source.name)
                last_write = time.monotonic()
    except BaseException:
        client.stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        manifest_path, images = _write(points, journal, out, source.name)
    if fatal is not None:
        raise fatal
    statuses = pd.Series([e["status"] for e in journal.snapshot()], dtype=object)
    if failures and len(statuses) == len(points) - len(todo):  # every point tried failed: nothing was fetched
        raise FetchError(f"nothing fetched: all {len(failures):,} points tried failed (first: {failures[0]}); "
                         "rerun to retry them")
    return FetchResult(
        points=len(points),
        finished=len(statuses),
        with_imagery=int((statuses == "done").sum()),
        no_imagery=int((statuses == "none").sum()),
        duplicates=int((statuses == "duplicate").sum()),
        failed=len(failures),
        images=images,
        new_images=run.new_images,
        requests=client.budget.used,
        budget_hit=budget_hit,
        manifest=manifest_path,
        failures=failures,
    )


def _write(points: pd.DataFrame, journal: _Journal, out: Path, source_name: str) -> tuple[Path, int]:
    """Rebuild ``manifest.csv`` from the journal (plan order, then view order); returns it and its size."""
    rows = []
    for entry in journal.snapshot():
        if entry.get("status") != "done":
            continue
        for view in entry.get("views", []):
            rows.append({"image": view["image"], "lat": view["lat"], "lon": view["lon"],
                         "location_id": entry["location_id"], "heading": view["heading"],
                         "capture_date": view["capture_date"], "source": source_name,
                         "source_id": view["source_id"], "point_id": entry["point_id"]})
    frame = pd.DataFrame(rows, columns=[c for c in MANIFEST_COLUMNS if c not in ("plan_lat", "plan_lon")])
    labels = points.rename(columns={"lat": "plan_lat", "lon": "plan_lon"})
    labels = labels.drop(columns=[c for c in labels.columns
                                  if c in MANIFEST_COLUMNS and c not in ("point_id", "plan_lat", "plan_lon")])
    order = pd.Series(np.arange(len(points)), index=points["point_id"].to_numpy())
    frame = frame.merge(labels, on="point_id", how="left")
    frame["_order"] = frame["point_id"].map(order)
    frame = frame.sort_values(["_order"], kind="stable").drop(columns="_order")
    frame = frame.drop_duplicates(subset="image", keep="first").reset_index(drop=True)
    return write_manifest(frame, out / MANIFEST), len(frame)


def parse_headings(text: str) -> tuple[float, ...]:
    """``"0,90,180"`` → ``(0.0, 90.0, 180.0)``; ``"any"`` → ``()`` (one image, any direction)."""
    if text.strip().lower() in ("any", ""):
        return ()
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise FetchError(f"bad headings {text!r}: give degrees separated by commas, e.g. 0,90,180") from None
    if any(not np.isfinite(v) for v in values) or len(set(v % 360 for v in values)) != len(values):
        raise FetchError(f"bad headings {text!r}: each must be a distinct finite number of degrees")
    return values


def summary_lines(result: FetchResult) -> Sequence[str]:
    """What the CLI prints after a fetch."""
    lines = [
        f"{result.images:,} images at {result.with_imagery:,} places in {result.manifest} "
        f"({result.new_images:,} new, {result.requests:,} requests this run)",
        f"points: {result.finished:,} of {result.points:,} finished "
        f"({result.no_imagery:,} without imagery, {result.duplicates:,} duplicates)",
    ]
    if result.budget_hit:
        lines.append(f"stopped at the request budget: {result.remaining:,} points left; rerun to continue")
    if result.failed:
        lines.append(f"{result.failed:,} points failed (first: {result.failures[0]}); rerun to retry them")
    return lines
