"""Extract image features with a frozen encoder and cache them in shards, resumably.

The cache lives under ``<cache>/features/<encoder-key>/<views>/``: ``<encoder-key>`` names
the encoder and hashes its weights and preprocessing, ``<views>`` the variant (``plain``,
``hflip``, ``crops3``, …). Each shard is a safetensors file holding up to ``shard_size``
images: their content hashes (SHA-1 of the file bytes, so a renamed or copied image is a
hit), outputs ``(k, views, dim)``, a valid flag and, in its metadata, why bad images
failed. The shards are the index: a shard is written atomically once all its images are
done, so a killed run loses at most one unfinished shard and a rerun decodes nothing.

Several processes may fill one folder at once: each claims a shard's worth of images before
encoding them (:mod:`geoscope.features.claims`), passes over images another live process claimed and
waits for those at the end, so no image is encoded twice and none is lost with a killed
process. :func:`cache_features` encodes one *share* of the images (``share=(k, n)``: those
whose content hash is ``k`` modulo ``n``, disjoint and the same on every machine), which is
how ``geoscope features --shard K/N`` and torchrun ranks split a manifest.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.manifest import Manifest, read_manifest
from ..distributed import cores_per_process
from ..encoders.preprocess import Preprocess, Views
from ..errors import BadImageError, GeoscopeError, quote_name
from ..fileio import atomic_open, atomic_write_bytes, atomic_write_json
from ..images import open_regular, read_rgb
from ..paths import cache_dir, writable_cache_folder
from .claims import HASH_BYTES, WorkClaims

if TYPE_CHECKING:
    from ..encoders.image import ImageEncoder

SHARD_SIZE = 512
WAIT_SECONDS = 1.0
"""How often a process waiting for images other processes claimed looks for their shards."""


@dataclass
class FeatureSet:
    """Features of a list of images, in their order.

    ``embeddings`` is float32 ``(n, dim)`` (views averaged) or ``(n, views, dim)`` (views
    kept); rows of bad images are NaN and ``valid`` is false there, with one line per bad
    image in ``errors``. ``encoded`` counts distinct image files this call decoded and
    encoded, ``cached`` the rows served from what was cached before it, ``duplicates`` the
    rows whose file is byte-identical to an earlier row's (they share its features).
    Trunk feature maps come flattened: reshape rows to ``output_shape``.
    """

    embeddings: np.ndarray
    valid: np.ndarray
    errors: list[str]
    encoder_name: str
    paths: list[str]
    views: str = "plain"
    output_shape: tuple[int, ...] = ()
    encoded: int = 0
    cached: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    encode_seconds: float = field(default=0.0, repr=False)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def images_per_second(self) -> float:
        """Images decoded and encoded per second of this call (0 when all came from the cache)."""
        return self.encoded / self.encode_seconds if self.encode_seconds > 0 else 0.0

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write embeddings, valid flags, paths and errors to one ``.npz`` file atomically."""
        path = Path(path)
        with atomic_open(path) as handle:
            np.savez(
                handle, embeddings=self.embeddings, valid=self.valid, paths=np.array(self.paths, dtype=str),
                errors=np.array(self.errors, dtype=str), encoder_name=np.array(self.encoder_name),
                views=np.array(self.views), output_shape=np.array(self.output_shape, dtype=np.int64),
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureSet:
        """Read a file written by :meth:`save`."""
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(
                    embeddings=data["embeddings"], valid=data["valid"].astype(bool),
                    errors=[str(e) for e in data["errors"]], encoder_name=str(data["encoder_name"]),
                    paths=[str(p) for p in data["paths"]], views=str(data["views"]),
                    output_shape=tuple(int(v) for v in data["output_shape"]),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise GeoscopeError(f"{path}: not a geoscope features file ({exc})") from None


Encoding = Callable[..., set[bytes]]
"""What encodes the images a cache lacks into it: called as ``_encode_missing`` is (the images to encode by
content hash, the encoder, views, store and keywords), it returns the hashes it encoded."""

BATCH_SIZE = 16
"""Images per encoder call: small batches stay in cache (Lite0 on 2 cores: 4.2 ms/image at 16, 4.4 at 64)."""
DECODE_CHUNK = 4
"""Images per decoding task: small enough that the decoding threads share even one batch."""


def extract_features(
    images: Manifest | str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    encoder: ImageEncoder | str,
    *,
    batch_size: int = BATCH_SIZE,
    workers: int | None = None,
    progress: bool = True,
    augment: str | Views | None = None,
    combine: str = "mean",
    backend: str = "onnx",
    shard_size: int = SHARD_SIZE,
    cache: str | os.PathLike[str] | None = None,
    description: str | None = None,
    device: str = "cpu",
    encoding: Encoding | None = None,
) -> FeatureSet:
    """Features of every image, from the cache where possible, encoding only what is missing.

    ``images`` is a :class:`Manifest`, a manifest file, or a list of image paths. ``encoder``
    is an :class:`~geoscope.encoders.image.ImageEncoder` or a name (built on ``backend``
    only if something needs encoding). ``augment`` picks the views (see
    :class:`~geoscope.encoders.preprocess.Views`: ``plain``, ``hflip``, ``grid``, …), each a
    separate cached variant; ``combine`` is ``mean`` (average the views) or ``stack``.
    Decoding and preprocessing run on ``workers`` threads (PIL releases the GIL; measured
    3–4× faster here than a process pool), overlapped with encoding; 0 decodes inline.
    Bad images are reported in ``errors`` (one line each, the name quoted when it holds odd
    characters) and skipped. ``cache`` overrides the cache root's ``features`` folder.
    ``description`` labels the progress bar (default: what is encoded, e.g. "encoding
    efficientnet-lite0, flipped copies"). ``device`` (``cpu``, ``cuda:N``) is where an encoder
    given by name runs. Other processes filling the same cache at the same time share the work. ``encoding``
    encodes what the cache lacks (default: this process, decoding on threads).
    """
    start = time.perf_counter()
    if combine not in ("mean", "stack"):
        raise GeoscopeError(f"combine must be 'mean' or 'stack', not {combine!r}")
    job = _Job.create(images, encoder, augment, backend, device, workers, batch_size, shard_size, cache, encoding)
    paths, views, encoder, store = job.paths, job.views, job.encoder, job.store
    digests, read_errors = hash_files(paths, job.workers)
    todo = job.missing(digests)
    encoded, encode_seconds = job.encode(todo, progress, description)
    store = job.store

    out = np.full((len(paths), views.count, encoder.dim), np.nan, dtype=np.float32)
    valid = np.zeros(len(paths), dtype=bool)
    stored = [i for i, digest in enumerate(digests) if digest is not None]
    reasons = dict(read_errors)
    for i, row, reason in store.read([digests[i] for i in stored]):
        if row is None:
            reasons[stored[i]] = f"{quote_name(paths[stored[i]])}: {reason}"
        else:
            out[stored[i]], valid[stored[i]] = row, True
    errors = [reasons[i] for i in sorted(reasons)]
    if combine == "stack":
        embeddings = out
    elif views.count == 1:
        embeddings = out[:, 0]  # the one view, without a copy
    else:
        embeddings = out.mean(axis=1)  # NaN rows stay NaN
    return FeatureSet(
        embeddings=np.ascontiguousarray(embeddings, dtype=np.float32), valid=valid, errors=errors,
        encoder_name=encoder.name, paths=[str(p) for p in paths], views=views.key,
        output_shape=tuple(encoder.output_shape), encoded=len(encoded),
        cached=sum(d is not None and d not in encoded for d in digests),
        duplicates=sum(d is not None for d in digests) - len(set(digests) - {None}),
        seconds=time.perf_counter() - start, encode_seconds=encode_seconds,
    )


@dataclass
class CacheReport:
    """What :func:`cache_features` did for one share of a list of images."""

    rows: int
    share_rows: int
    """Rows whose image (by content hash) is this share's; unreadable files belong to no share."""
    encoded: int
    cached: int
    """Distinct images of this share found in the cache (encoded before, or by another process)."""
    seconds: float
    encode_seconds: float = field(default=0.0, repr=False)

    @property
    def images_per_second(self) -> float:
        return self.encoded / self.encode_seconds if self.encode_seconds > 0 else 0.0


def cache_features(
    images: Manifest | str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    encoder: ImageEncoder | str,
    *,
    share: tuple[int, int] = (0, 1),
    batch_size: int = BATCH_SIZE,
    workers: int | None = None,
    progress: bool = True,
    augment: str | Views | None = None,
    backend: str = "onnx",
    shard_size: int = SHARD_SIZE,
    cache: str | os.PathLike[str] | None = None,
    description: str | None = None,
    device: str = "cpu",
    encoding: Encoding | None = None,
) -> CacheReport:
    """Encode into the cache the images of share ``k`` of ``n`` that it lacks; assemble nothing.

    The share of an image is its content hash modulo ``n``: shares are disjoint, cover every
    readable image, and do not depend on the order of the rows or on the machine. Images of
    the share that another process has claimed are waited for. Other arguments are those of
    :func:`extract_features`.
    """
    start = time.perf_counter()
    k, n = share
    if not (n >= 1 and 0 <= k < n):
        raise GeoscopeError(f"share must be K/N with 0 <= K < N, not {k}/{n}")
    job = _Job.create(images, encoder, augment, backend, device, workers, batch_size, shard_size, cache, encoding)
    digests, _ = hash_files(job.paths, job.workers)
    mine = {d for d in digests if d is not None and in_share(d, share)}
    todo = job.missing(digests, share)
    encoded, encode_seconds = job.encode(todo, progress, description)
    return CacheReport(rows=len(job.paths), share_rows=sum(d in mine for d in digests), encoded=len(encoded),
                       cached=len(mine) - len(encoded), seconds=time.perf_counter() - start,
                       encode_seconds=encode_seconds)


def in_share(digest: bytes, share: tuple[int, int]) -> bool:
    """Whether the image with this content hash belongs to share ``k`` of ``n``."""
    k, n = share
    return n == 1 or int.from_bytes(digest[:8], "big") % n == k


def _missing(paths: Sequence[Path], digests: Sequence[bytes | None], store: ShardStore,
             share: tuple[int, int] = (0, 1)) -> dict[bytes, Path]:
    """The distinct readable images (of a share) the store lacks, each with one of its paths."""
    todo: dict[bytes, Path] = {}
    for path, digest in zip(paths, digests, strict=True):
        if digest is not None and digest not in store and digest not in todo and in_share(digest, share):
            todo[digest] = path
    return todo


@dataclass
class _Job:
    """One encoder, view variant and cache folder, and how to encode into it."""

    paths: list[Path]
    encoder: ImageEncoder
    views: Views
    store: ShardStore
    workers: int
    batch_size: int
    shard_size: int
    under_cache_root: bool
    encoding: Encoding

    @classmethod
    def create(cls, images: Manifest | str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
               encoder: ImageEncoder | str, augment: str | Views | None, backend: str, device: str,
               workers: int | None, batch_size: int, shard_size: int,
               cache: str | os.PathLike[str] | None, encoding: Encoding | None = None) -> _Job:
        from ..encoders.image import get_image_encoder

        if batch_size < 1 or shard_size < 1:
            raise GeoscopeError("batch_size and shard_size must be at least 1")
        views = Views.parse(augment)
        paths = image_paths(images)
        if isinstance(encoder, str):
            encoder = get_image_encoder(encoder, backend, device)  # cheap: weights load only if needed
        workers = cores_per_process() if workers is None else max(0, workers)
        store = ShardStore(Path(cache) if cache else cache_dir() / "features", encoder, views)
        return cls(paths, encoder, views, store, workers, batch_size, shard_size, cache is None,
                   encoding or _encode_missing)

    def missing(self, digests: Sequence[bytes | None], share: tuple[int, int] = (0, 1)) -> dict[bytes, Path]:
        """The distinct readable images (of a share) the store lacks. Where any are, the encoder is loaded first,
        and where its runtime fell back to another (OpenVINO failing to load), the store is that runtime's: the
        cache holds each runtime's features under its own key."""
        todo = _missing(self.paths, digests, self.store, share)
        if todo and self.encoder.load().cache_key != self.store.key:
            self.store = ShardStore(self.store.root, self.encoder, self.views)
            todo = _missing(self.paths, digests, self.store, share)
        return todo

    def encode(self, todo: dict[bytes, Path], progress: bool, description: str | None) -> tuple[set[bytes], float]:
        """Encode ``todo`` into the store, sharing the work with other processes; returns the images
        this process encoded and the seconds it took."""
        if not todo:
            return set(), 0.0
        start = time.perf_counter()
        writable_cache_folder(self.store.folder, under_cache_root=self.under_cache_root)  # one line, before any work
        encoded = self.encoding(todo, self.encoder, self.views, self.store, batch_size=self.batch_size,
                                workers=self.workers, shard_size=self.shard_size, progress=progress,
                                description=description or progress_description(self.encoder.name, self.views))
        return encoded, time.perf_counter() - start


def image_paths(images: Manifest | str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Absolute image paths of a manifest, a manifest file, or a list of paths."""
    if isinstance(images, Manifest):
        return images.image_paths
    if isinstance(images, str | os.PathLike):
        return read_manifest(images, check_images=False).image_paths
    return [Path(p).absolute() for p in images]


def hash_files(paths: Sequence[Path], workers: int = 2, *, progress: bool = False,
               ) -> tuple[list[bytes | None], dict[int, str]]:
    """SHA-1 of each file's bytes (``None`` where unreadable) and an error line for each of those (with
    ``progress``, a bar on stderr).

    A file reached again under another name (a link) is read once.
    """
    seen: dict[tuple[int, ...], bytes] = {}

    def digest(path: Path) -> bytes | str:
        try:
            with open_regular(path) as handle:
                info = os.fstat(handle.fileno())
                key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
                if key not in seen:
                    seen[key] = hashlib.file_digest(handle, "sha1").digest()
                return seen[key]
        except BadImageError as exc:
            return str(exc)
        except OSError as exc:
            return f"{quote_name(path)}: cannot read ({exc.strerror or exc})"

    from tqdm import tqdm

    with ThreadPoolExecutor(max(1, workers)) as executor:
        results = list(tqdm(executor.map(digest, paths), total=len(paths), desc="reading images", unit="img",
                            disable=not progress or None, leave=False, file=sys.stderr, dynamic_ncols=True))
    errors = {i: r for i, r in enumerate(results) if isinstance(r, str)}
    return [None if isinstance(r, str) else r for r in results], errors


class DigestIndex:
    """Content hash → (shard, row), about 28 bytes per image, so a cache of millions of images fits in memory.

    New shards' hashes go to a small dict, merged now and then into sorted arrays that are
    searched by bisection. When an image is in several shards, any copy answers.
    """

    def __init__(self) -> None:
        self.shards: list[Path] = []
        self._sorted = np.zeros(0, dtype=f"V{HASH_BYTES}")
        self._where = np.zeros((0, 2), dtype=np.int32)
        self._recent: dict[bytes, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def add(self, shard: Path, hashes: np.ndarray) -> None:
        """Index the ``(k, 20)`` uint8 ``hashes`` of one shard's rows."""
        number = len(self.shards)
        self.shards.append(shard)
        for row, digest in enumerate(hashes):
            self._recent.setdefault(digest.tobytes(), (number, row))
        if len(self._recent) >= max(65536, len(self._sorted) // 4):
            self._merge()

    def find(self, digest: bytes) -> tuple[Path, int] | None:
        """The shard and row of an image, or ``None``."""
        where = self._recent.get(digest)
        if where is None and len(self._sorted):
            key = np.frombuffer(digest, dtype=self._sorted.dtype)
            i = int(np.searchsorted(self._sorted, key)[0])
            if i < len(self._sorted) and self._sorted[i] == key[0]:
                where = tuple(self._where[i])
        return None if where is None else (self.shards[where[0]], int(where[1]))

    def _merge(self) -> None:
        keys = np.concatenate([self._sorted, np.frombuffer(b"".join(self._recent), dtype=self._sorted.dtype)])
        where = np.concatenate([self._where, np.array(list(self._recent.values()), dtype=np.int32).reshape(-1, 2)])
        order = np.argsort(keys, kind="stable")
        self._sorted, self._where, self._recent = keys[order], where[order], {}


class ShardStore:
    """The cached outputs of one encoder and view variant: shards indexed by content hash."""

    def __init__(self, root: Path, encoder: ImageEncoder, views: Views) -> None:
        self.root, self.key = root, encoder.cache_key
        self.folder = root / self.key / views.key
        self.views, self.dim = views, encoder.dim
        self.dtype = np.dtype(encoder.storage_dtype)
        self._index = DigestIndex()
        self._shards: set[str] = set()
        self._info = {
            "encoder": encoder.name, "fingerprint": encoder.fingerprint,
            "preprocess": encoder.preprocess.to_dict(), "views": views.key,
            "output_shape": list(encoder.output_shape), "storage_dtype": self.dtype.name,
        }
        self.refresh()

    def refresh(self) -> ShardStore:
        """Index the shards other processes wrote since (returns the store)."""
        if self.folder.is_dir():
            for shard in sorted(self.folder.glob("shard-*.safetensors")):
                if shard.name not in self._shards:
                    self._add_to_index(shard)
        return self

    def __contains__(self, digest: bytes) -> bool:
        return self._index.find(digest) is not None

    def __len__(self) -> int:
        return len(self._index)

    def _add_to_index(self, shard: Path) -> None:
        from safetensors import safe_open

        try:
            with safe_open(str(shard), "np") as handle:
                hashes = handle.get_tensor("hashes")
        except Exception:  # unreadable shard (should not happen with atomic writes): ignore, re-encode
            return
        self._shards.add(shard.name)
        self._index.add(shard, hashes)

    def write(self, digests: list[bytes], outputs: np.ndarray, reasons: list[str | None]) -> Path:
        """Store one shard: ``outputs`` ``(k, views, dim)`` (ignored where ``reasons[i]`` is set)."""
        from safetensors.numpy import save

        hashes = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), HASH_BYTES)
        valid = np.array([r is None for r in reasons], dtype=np.uint8)
        data = np.where(valid[:, None, None].astype(bool), outputs, 0).astype(self.dtype)
        errors = {str(i): r for i, r in enumerate(reasons) if r is not None}
        blob = save({"hashes": hashes, "outputs": data, "valid": valid},
                    metadata={"errors": json.dumps(errors), **{k: json.dumps(v) for k, v in self._info.items()}})
        name = hashlib.sha1(hashes.tobytes()).hexdigest()[:16]
        shard = self.folder / f"shard-{name}.safetensors"
        if not (self.folder / "info.json").is_file():
            atomic_write_json(self.folder / "info.json", self._info)
        atomic_write_bytes(shard, blob)
        self._add_to_index(shard)
        return shard

    def get(self, digest: bytes) -> tuple[np.ndarray | None, str | None]:
        """One image's outputs ``(views, dim)`` as float32, or ``(None, why it failed)``."""
        return next(self.read([digest]))[1:]

    def read(self, digests: Sequence[bytes]) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
        """``(i, outputs, None)`` or ``(i, None, why it failed)`` for each stored ``digests[i]``, shard by shard.

        One shard is in memory at a time, whatever order the images are in.
        """
        from safetensors import safe_open

        by_shard: dict[Path, list[tuple[int, int]]] = collections.defaultdict(list)
        for i, digest in enumerate(digests):
            where = self._index.find(digest)
            if where is None:
                raise KeyError(digest.hex())
            by_shard[where[0]].append((i, where[1]))
        for shard, wanted in by_shard.items():
            with safe_open(str(shard), "np") as handle:
                outputs, valid = handle.get_tensor("outputs"), handle.get_tensor("valid")
                errors = json.loads((handle.metadata() or {}).get("errors", "{}"))
            for i, row in wanted:
                if valid[row]:
                    yield i, outputs[row].astype(np.float32), None
                else:
                    yield i, None, errors.get(str(row), "unreadable image")


def load_views(path: Path, preprocess: Preprocess, views: Views,
               out: np.ndarray | None = None) -> tuple[np.ndarray | None, str | None]:
    """Decode and preprocess one image into its views (into ``out`` when given), or ``(None, why not)``."""
    try:
        return preprocess.views(read_rgb(path, min_size=preprocess.decode_size), views, out=out), None
    except BadImageError as exc:  # the caller names the file: keep only the reason
        message = str(exc)
        for prefix in (f"{quote_name(path)}: ", f"{path}: "):
            if message.startswith(prefix):
                return None, message[len(prefix):]
        return None, message


def _prefetch(executor: Executor | None, fn: Callable[[Any], Any], items: Iterable[Any],
              depth: int) -> Iterator[Any]:
    """``map(fn, items)`` in order, keeping at most ``depth`` calls in flight on ``executor``."""
    if executor is None:
        yield from map(fn, items)
        return
    pending: collections.deque[Future] = collections.deque()
    for item in items:
        pending.append(executor.submit(fn, item))
        if len(pending) >= depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def progress_description(encoder_name: str, views: Views) -> str:
    """What the progress bar says is being encoded: the encoder, and which views if not the plain image."""
    what = []
    if views.hflip:
        what.append("flipped copies")
    if views.crops > 1:
        what.append(f"{views.crops} crops each")
    return f"encoding {encoder_name}" + (f", {' and '.join(what)}" if what else "")


def _encode_missing(todo: dict[bytes, Path], encoder: ImageEncoder, views: Views, store: ShardStore, *,
                    batch_size: int, workers: int, shard_size: int, progress: bool, description: str) -> set[bytes]:
    """Encode ``todo`` into ``store``, a shard at a time, each claimed first; returns the images this process encoded.

    Images another live process has claimed are left to it and waited for at the end; if it
    dies, its claims lapse and they are encoded here.
    """
    from tqdm import tqdm

    executor = ThreadPoolExecutor(workers, thread_name_prefix="geoscope-decode") if workers else None
    bar = tqdm(total=len(todo), unit="img", desc=description, disable=not progress,
               dynamic_ncols=True, smoothing=0.1)
    encoded: set[bytes] = set()
    try:
        with WorkClaims(store.folder) as claims:
            remaining = list(todo)
            while True:
                encoded.update(_encode_claimed(remaining, todo, encoder, views, store, claims, executor, bar,
                                               batch_size=batch_size, shard_size=shard_size,
                                               depth=max(2, 2 * batch_size // DECODE_CHUNK)))
                store.refresh()
                remaining = [d for d in remaining if d not in store]
                if not remaining:
                    break
                bar.n = len(todo) - len(remaining)  # what the others finished counts too
                bar.set_postfix_str(f"waiting for {len(remaining):,} images other processes claimed")
                time.sleep(WAIT_SECONDS)
    finally:
        bar.close()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    return encoded


def _encode_claimed(remaining: list[bytes], todo: dict[bytes, Path], encoder: ImageEncoder, views: Views,
                    store: ShardStore, claims: WorkClaims, executor: Executor | None, bar: Any, *,
                    batch_size: int, shard_size: int, depth: int) -> list[bytes]:
    """Claim shard-sized groups of ``remaining`` while any is free and encode them, decoding ``depth`` batches ahead
    on ``executor``."""
    groups: collections.deque[list[bytes]] = collections.deque()

    def claimed_groups() -> Iterator[list[bytes]]:
        pending = remaining
        while pending:
            group = claims.claim(pending, store.refresh, shard_size)
            if not group:
                return
            groups.append(group)
            taken = set(group)
            pending = [d for d in pending if d not in taken and d not in store]
            yield group

    c = encoder.preprocess.crop_size

    def decoding_tasks() -> Iterator[tuple[np.ndarray, int, list[Path]]]:
        """A few images each, decoded straight into their slots of a batch: the encoder's input needs no copy."""
        for group in claimed_groups():
            for i in range(0, len(group), batch_size):
                paths = [todo[d] for d in group[i:i + batch_size]]
                batch = np.empty((len(paths), views.count, 3, c, c), dtype=np.float32)
                for j in range(0, len(paths), DECODE_CHUNK):
                    yield batch, j, paths[j:j + DECODE_CHUNK]

    def decode(task: tuple[np.ndarray, int, list[Path]]) -> tuple[np.ndarray, list[str | None]]:
        batch, start, paths = task
        reasons = [load_views(path, encoder.preprocess, views, out=batch[start + k])[1] for k, path in enumerate(paths)]
        return batch, reasons

    encoded: list[bytes] = []
    group: list[bytes] = []
    reasons: list[str | None] = []  # of the group so far
    batch_reasons: list[str | None] = []  # of the batch so far
    outputs = np.zeros(0, dtype=np.float32)
    for batch, chunk_reasons in _prefetch(executor, decode, decoding_tasks(), depth=depth):
        if not reasons and not batch_reasons:  # a new group starts: it was claimed when its first task was queued
            group = groups.popleft()
            outputs = np.zeros((len(group), views.count, encoder.dim), dtype=np.float32)
        batch_reasons += chunk_reasons
        if len(batch_reasons) < len(batch):
            continue
        read = [k for k, reason in enumerate(batch_reasons) if reason is None]
        if read:  # a bad image's slots were never written: leave them out
            inputs = batch if len(read) == len(batch) else batch[read]
            outputs[[len(reasons) + k for k in read]] = encoder.encode(inputs.reshape(-1, 3, c, c)).reshape(
                len(read), views.count, encoder.dim)
        bar.update(len(batch))
        reasons += batch_reasons
        batch_reasons = []
        if len(reasons) == len(group):
            store.write(group, outputs, reasons)
            claims.release(group)
            encoded += group
            reasons = []
    return encoded
