"""Extract image features with a frozen encoder and cache them in shards, resumably.

The cache lives under ``<cache>/features/<encoder-key>/<views>/``: ``<encoder-key>`` names
the encoder and hashes its weights and preprocessing, ``<views>`` the variant (``plain``,
``hflip``, ``crops3``, …). Each shard is a safetensors file holding up to ``shard_size``
images: their content hashes (SHA-1 of the file bytes, so a renamed or copied image is a
hit), outputs ``(k, views, dim)``, a valid flag and, in its metadata, why bad images
failed. The shards are the index: a shard is written atomically once all its images are
done, so a killed run loses at most one unfinished shard and a rerun decodes nothing.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .data.manifest import Manifest, read_manifest
from .encoders.onnx_runtime import cpu_count
from .encoders.preprocess import Preprocess, Views
from .errors import BadImageError, GeoscopeError, quote_name
from .fileio import atomic_open, atomic_write_bytes, atomic_write_json
from .images import open_image
from .paths import cache_dir, writable_cache_folder

if TYPE_CHECKING:
    from .encoders.image import ImageEncoder

SHARD_SIZE = 512
_HASH_BYTES = 20


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


def extract_features(
    images: Manifest | str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    encoder: ImageEncoder | str,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    progress: bool = True,
    augment: str | Views | None = None,
    combine: str = "mean",
    backend: str = "onnx",
    shard_size: int = SHARD_SIZE,
    cache: str | os.PathLike[str] | None = None,
    description: str | None = None,
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
    efficientnet-lite0, flipped copies").
    """
    from .encoders.image import get_image_encoder

    start = time.perf_counter()
    if combine not in ("mean", "stack"):
        raise GeoscopeError(f"combine must be 'mean' or 'stack', not {combine!r}")
    if batch_size < 1 or shard_size < 1:
        raise GeoscopeError("batch_size and shard_size must be at least 1")
    views = Views.parse(augment)
    paths = image_paths(images)
    if isinstance(encoder, str):
        encoder = get_image_encoder(encoder, backend)  # cheap: weights load only if needed
    workers = cpu_count() if workers is None else max(0, workers)

    digests, read_errors = hash_files(paths, workers)
    store = ShardStore(Path(cache) if cache else cache_dir() / "features", encoder, views)
    todo: dict[bytes, Path] = {}
    for path, digest in zip(paths, digests, strict=True):
        if digest is not None and digest not in store and digest not in todo:
            todo[digest] = path

    encode_start = time.perf_counter()
    if todo:
        writable_cache_folder(store.folder, under_cache_root=cache is None)  # one line, before any work
        _encode_missing(todo, encoder, views, store, batch_size=batch_size, workers=workers,
                        shard_size=shard_size, progress=progress,
                        description=description or progress_description(encoder.name, views))
    encode_seconds = time.perf_counter() - encode_start if todo else 0.0

    out = np.full((len(paths), views.count, encoder.dim), np.nan, dtype=np.float32)
    valid = np.zeros(len(paths), dtype=bool)
    errors: list[str] = []
    for i, (path, digest) in enumerate(zip(paths, digests, strict=True)):
        if digest is None:
            errors.append(read_errors[i])
            continue
        row, reason = store.get(digest)
        if row is None:
            errors.append(f"{quote_name(path)}: {reason}")
        else:
            out[i], valid[i] = row, True
    embeddings = out.mean(axis=1) if combine == "mean" else out  # NaN rows stay NaN
    return FeatureSet(
        embeddings=np.ascontiguousarray(embeddings, dtype=np.float32), valid=valid, errors=errors,
        encoder_name=encoder.name, paths=[str(p) for p in paths], views=views.key,
        output_shape=tuple(encoder.output_shape), encoded=len(todo),
        cached=sum(d is not None and d not in todo for d in digests),
        duplicates=sum(d is not None for d in digests) - len(set(digests) - {None}),
        seconds=time.perf_counter() - start, encode_seconds=encode_seconds,
    )


def image_paths(images: Manifest | str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Absolute image paths of a manifest, a manifest file, or a list of paths."""
    if isinstance(images, Manifest):
        return images.image_paths
    if isinstance(images, str | os.PathLike):
        return read_manifest(images, check_images=False).image_paths
    return [Path(p).absolute() for p in images]


def hash_files(paths: Sequence[Path], workers: int = 2) -> tuple[list[bytes | None], dict[int, str]]:
    """SHA-1 of each file's bytes (``None`` where unreadable) and an error line for each of those."""

    def digest(path: Path) -> bytes | str:
        try:
            with open(path, "rb") as handle:
                return hashlib.file_digest(handle, "sha1").digest()
        except FileNotFoundError:
            return f"{quote_name(path)}: image file not found"
        except IsADirectoryError:
            return f"{quote_name(path)}: is a directory, not an image"
        except OSError as exc:
            return f"{quote_name(path)}: cannot open ({exc.strerror or exc})"

    with ThreadPoolExecutor(max(1, workers)) as executor:
        results = list(executor.map(digest, paths))
    errors = {i: r for i, r in enumerate(results) if isinstance(r, str)}
    return [None if isinstance(r, str) else r for r in results], errors


class ShardStore:
    """The cached outputs of one encoder and view variant: shards indexed by content hash."""

    def __init__(self, root: Path, encoder: ImageEncoder, views: Views) -> None:
        self.folder = root / encoder.cache_key / views.key
        self.views, self.dim = views, encoder.dim
        self.dtype = np.dtype(encoder.storage_dtype)
        self._index: dict[bytes, tuple[Path, int]] = {}
        self._loaded: dict[Path, dict[str, Any]] = {}
        self._info = {
            "encoder": encoder.name, "fingerprint": encoder.fingerprint,
            "preprocess": encoder.preprocess.to_dict(), "views": views.key,
            "output_shape": list(encoder.output_shape), "storage_dtype": self.dtype.name,
        }
        if self.folder.is_dir():
            for shard in sorted(self.folder.glob("shard-*.safetensors")):
                self._add_to_index(shard)

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._index

    def __len__(self) -> int:
        return len(self._index)

    def _add_to_index(self, shard: Path) -> None:
        from safetensors import safe_open

        try:
            with safe_open(str(shard), "np") as handle:
                hashes = handle.get_tensor("hashes")
        except Exception:  # unreadable shard (should not happen with atomic writes): ignore, re-encode
            return
        for row, digest in enumerate(hashes):
            self._index.setdefault(digest.tobytes(), (shard, row))

    def write(self, digests: list[bytes], outputs: np.ndarray, reasons: list[str | None]) -> Path:
        """Store one shard: ``outputs`` ``(k, views, dim)`` (ignored where ``reasons[i]`` is set)."""
        from safetensors.numpy import save

        hashes = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), _HASH_BYTES)
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
        shard, row = self._index[digest]
        if shard not in self._loaded:
            from safetensors import safe_open

            with safe_open(str(shard), "np") as handle:
                self._loaded[shard] = {
                    "outputs": handle.get_tensor("outputs"), "valid": handle.get_tensor("valid"),
                    "errors": json.loads((handle.metadata() or {}).get("errors", "{}")),
                }
        data = self._loaded[shard]
        if not data["valid"][row]:
            return None, data["errors"].get(str(row), "unreadable image")
        return data["outputs"][row].astype(np.float32), None


def load_views(path: Path, preprocess: Preprocess, views: Views) -> tuple[np.ndarray | None, str | None]:
    """Decode and preprocess one image into its views, or ``(None, why not)`` for a bad image."""
    try:
        return preprocess.views(open_image(path, min_size=preprocess.decode_size), views), None
    except BadImageError as exc:  # the caller names the file: keep only the reason
        message = str(exc)
        for prefix in (f"{quote_name(path)}: ", f"{path}: "):
            if message.startswith(prefix):
                return None, message[len(prefix):]
        return None, message


def _load_many(paths: list[Path], preprocess: Preprocess, views: Views) -> list[tuple[np.ndarray | None, str | None]]:
    return [load_views(p, preprocess, views) for p in paths]


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
                    batch_size: int, workers: int, shard_size: int, progress: bool, description: str) -> None:
    from functools import partial

    from tqdm import tqdm

    digests = list(todo)
    chunk = 4  # images per task
    tasks = [[todo[d] for d in digests[i:i + chunk]] for i in range(0, len(digests), chunk)]
    load = partial(_load_many, preprocess=encoder.preprocess, views=views)
    executor = ThreadPoolExecutor(workers, thread_name_prefix="geoscope-decode") if workers else None
    bar = tqdm(total=len(digests), unit="img", desc=description, disable=not progress,
               dynamic_ncols=True, smoothing=0.1)
    try:
        results = (r for task in _prefetch(executor, load, tasks, depth=max(2, 2 * batch_size // chunk))
                   for r in task)
        for start in range(0, len(digests), shard_size):
            shard_digests = digests[start:start + shard_size]
            outputs = np.zeros((len(shard_digests), views.count, encoder.dim), dtype=np.float32)
            reasons: list[str | None] = []
            pending: list[tuple[int, np.ndarray]] = []
            for row in range(len(shard_digests)):
                array, reason = next(results)
                reasons.append(reason)
                if array is not None:
                    pending.append((row, array))
                else:
                    bar.update(1)
                if len(pending) >= batch_size or (row == len(shard_digests) - 1 and pending):
                    _encode_batch(encoder, views, pending, outputs)
                    bar.update(len(pending))
                    pending = []
            store.write(shard_digests, outputs, reasons)
    finally:
        bar.close()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


def _encode_batch(encoder: ImageEncoder, views: Views, pending: list[tuple[int, np.ndarray]],
                  outputs: np.ndarray) -> None:
    batch = np.concatenate([array for _, array in pending])  # (k * views, 3, c, c)
    encoded = encoder.encode(batch).reshape(len(pending), views.count, encoder.dim)
    for (row, _), value in zip(pending, encoded, strict=True):
        outputs[row] = value
