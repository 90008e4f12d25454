"""Features of a whole manifest, of any size: read in chunks, encoded by one or many processes.

What ``geoscope features`` runs. The manifest is read a chunk of rows at a time
(:func:`geoscope.data.manifest.iter_manifest`), so memory holds one chunk whatever the
number of rows. For each chunk:

- one process encodes what the cache lacks (other commands filling the same cache share the work);
- under torchrun each rank encodes its share (:func:`geoscope.features.cache.cache_features`, shares by
  content hash), the ranks meet, and rank 0 reads the chunk's features back from the cache;
- with ``share=(k, n)`` (``--shard K/N``, separate machines sharing the cache folder) this process
  encodes its share and assembles nothing: a last run without a share reads everything back.

The output file is written as the chunks come (:class:`FeatureFileWriter`), in the format of
:meth:`geoscope.features.cache.FeatureSet.save`, and renamed into place once complete.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .. import distributed
from ..data.manifest import CHUNK_ROWS, iter_manifest, manifest_rows
from ..encoders.preprocess import Views
from ..errors import GeoscopeError, quote_name
from .cache import Encoding, FeatureSet, cache_features, extract_features, progress_description

CHUNK_BYTES = 64 << 20
"""About how much memory one chunk's features take (float32): chunks of big outputs have fewer rows."""


@dataclass
class ManifestFeatures:
    """What a features run did over a manifest (counts are rows unless said otherwise)."""

    rows: int = 0
    encoded: int = 0
    """Distinct images encoded by this command (by every process of it)."""
    cached: int = 0
    duplicates: int = 0
    bad: int = 0
    errors: list[str] = field(default_factory=list)
    """The first bad images' one-line errors."""
    share_rows: int = 0
    """With a share: rows whose image is this share's."""
    encoder_name: str = ""
    views: str = "plain"
    output_shape: tuple[int, ...] = ()
    processes: int = 1
    seconds: float = 0.0
    encode_seconds: float = 0.0
    output: Path | None = None

    @property
    def images_per_second(self) -> float:
        """Images encoded per second of encoding (all processes together)."""
        return self.encoded / self.encode_seconds if self.encode_seconds > 0 else 0.0


def manifest_features(
    manifest: str | os.PathLike[str],
    encoder: str,
    *,
    output: str | os.PathLike[str] | None = None,
    share: tuple[int, int] = (0, 1),
    chunk_rows: int | None = None,
    combine: str = "mean",
    augment: str | Views | None = None,
    backend: str = "onnx",
    device: str = "cpu",
    batch_size: int = 64,
    workers: int | None = None,
    cache: str | os.PathLike[str] | None = None,
    progress: bool = True,
    errors_kept: int = 10,
    encoding: Encoding | None = None,
) -> ManifestFeatures:
    """Fill the cache with the features of every image of ``manifest`` and, on rank 0, write ``output``.

    ``share`` ``(k, n)`` encodes only share ``k`` of ``n`` and assembles nothing (no ``output``).
    In a torchrun process group every rank calls this alike. ``chunk_rows`` defaults to what keeps
    a chunk's features near :data:`CHUNK_BYTES`. Other arguments are those of
    :func:`geoscope.features.cache.extract_features`; ``device`` is ``cpu`` or ``cuda:N``; ``encoding`` encodes what
    the cache lacks (default: this process; :mod:`geoscope.outputs.ray_jobs`: a Ray cluster).
    """
    from ..encoders.image import image_encoder_spec

    run = distributed.current(device)
    if share[1] > 1 and (run.distributed or output):
        raise GeoscopeError("a share (--shard K/N) fills the cache and writes no output: leave out -o, and write "
                            "it with a last run without --shard (under torchrun the ranks share the work themselves)")
    start = time.perf_counter()
    if chunk_rows is None:
        values = math.prod(image_encoder_spec(encoder).output_shape) * Views.parse(augment).count
        chunk_rows = max(1024, min(CHUNK_ROWS, CHUNK_BYTES // (4 * values)))
    total = manifest_rows(manifest)
    summary = ManifestFeatures(processes=run.world_size)
    writer = FeatureFileWriter(output, combine) if output and run.main else None
    common = {"augment": augment, "backend": backend, "device": device, "batch_size": batch_size,
              "workers": workers, "cache": cache, "encoding": encoding}
    progress = progress and run.main
    try:
        for manifest_chunk in iter_manifest(manifest, chunk_rows=chunk_rows):
            paths = manifest_chunk.image_paths
            where = f"rows {summary.rows + 1:,}–{summary.rows + len(paths):,}" + (f" of {total:,}" if total else "")
            summary.rows += len(paths)
            encoded_now = 0
            if run.distributed or share[1] > 1:
                mine = (run.rank, run.world_size) if run.distributed else share
                report = cache_features(paths, encoder, share=mine, progress=progress,
                                        description=_describe(encoder, augment, where), **common)
                counts = distributed.all_gather_object((report.encoded, report.encode_seconds))  # also: all meet
                encoded_now = sum(n for n, _ in counts)
                summary.encode_seconds += max(s for _, s in counts)
                summary.share_rows += report.share_rows
                if not run.distributed:
                    summary.encoded += report.encoded
                    summary.cached += report.cached
                if not run.main or not run.distributed:
                    continue
            chunk = extract_features(paths, encoder, combine=combine, progress=progress,
                                     description=_describe(encoder, augment, where), **common)
            summary.encoded += encoded_now + chunk.encoded
            summary.encode_seconds += chunk.encode_seconds
            summary.cached += max(0, chunk.cached - encoded_now)  # what the ranks encoded now is not "from cache"
            summary.duplicates += chunk.duplicates
            summary.bad += len(chunk.errors)
            summary.errors += chunk.errors[: max(0, errors_kept - len(summary.errors))]
            summary.encoder_name, summary.views = chunk.encoder_name, chunk.views
            summary.output_shape = chunk.output_shape
            if writer is not None:
                writer.append(chunk)
        if summary.rows and summary.bad == summary.rows:  # nothing to write: no output file, one line
            first = f"first: {summary.errors[0]}" if summary.errors else "see the errors above"
            raise GeoscopeError(f"{quote_name(manifest)}: no image could be read "
                                f"({summary.bad:,} of {summary.rows:,} failed; {first})")
        if writer is not None:
            summary.output = writer.close()
    finally:
        if writer is not None:
            writer.discard()
    summary.seconds = time.perf_counter() - start
    return summary


def _describe(encoder: str, augment: str | Views | None, where: str) -> str:
    return f"{progress_description(encoder, Views.parse(augment))} ({where})"


class FeatureFileWriter:
    """A :meth:`FeatureSet.save` file written chunk by chunk: memory holds one chunk, disk the rest.

    Embeddings and paths go to temporary files beside the output; :meth:`close` streams them
    into the ``.npz`` (an uncompressed zip of ``.npy`` arrays, as ``np.savez`` writes) and
    renames it into place.
    """

    def __init__(self, path: str | os.PathLike[str], combine: str = "mean") -> None:
        self.path = Path(path)
        self.combine = combine
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._embeddings = self._temporary("embeddings")
        self._paths = self._temporary("paths")
        self._valid: list[np.ndarray] = []
        self._errors: list[str] = []
        self._rows, self._longest = 0, 1
        self._row_shape: tuple[int, ...] | None = None
        self._meta: dict[str, np.ndarray] = {}

    def _temporary(self, what: str) -> BinaryIO:
        return tempfile.NamedTemporaryFile(prefix=f".{self.path.name}.{what}.", suffix=".part", dir=self.path.parent)

    def append(self, chunk: FeatureSet) -> None:
        """Add the rows of one chunk, in order."""
        if self._row_shape is None:
            self._row_shape = chunk.embeddings.shape[1:]
            self._meta = {"encoder_name": np.array(chunk.encoder_name), "views": np.array(chunk.views),
                          "output_shape": np.array(chunk.output_shape, dtype=np.int64)}
        self._embeddings.write(np.ascontiguousarray(chunk.embeddings, dtype="<f4").tobytes())
        for text in chunk.paths:
            self._paths.write(text.encode("utf-8", "surrogatepass") + b"\0")
            self._longest = max(self._longest, len(text))
        self._valid.append(np.asarray(chunk.valid, dtype=bool))
        self._errors += chunk.errors
        self._rows += len(chunk)

    def close(self) -> Path:
        """Write the ``.npz`` atomically; returns its path."""
        from ..fileio import atomic_open

        self._embeddings.flush()
        self._paths.flush()
        with atomic_open(self.path) as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as npz:
            shape = (self._rows, *(self._row_shape or (0,)))
            self._stream(npz, "embeddings", "<f4", shape, self._embeddings, lambda block: block)
            width = 4 * self._longest
            self._stream(npz, "paths", f"<U{self._longest}", (self._rows,), self._paths,
                         lambda block: b"".join(_utf32(p, width) for p in block.split(b"\0")[:-1]), separator=b"\0")
            arrays = {"valid": np.concatenate(self._valid) if self._valid else np.zeros(0, bool),
                      "errors": np.array(self._errors, dtype=str), **self._meta}
            for name, array in arrays.items():
                with npz.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
        self.discard()
        return self.path

    @staticmethod
    def _stream(npz: zipfile.ZipFile, name: str, dtype: str, shape: tuple[int, ...], source: BinaryIO,
                convert: Callable[[bytes], bytes], separator: bytes | None = None, block: int = 1 << 24) -> None:
        """One ``.npy`` member: its header, then ``source``'s bytes (converted block by block)."""
        with npz.open(f"{name}.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_2_0(member, {"descr": dtype, "fortran_order": False, "shape": shape})
            source.seek(0)
            rest = b""
            while data := source.read(block):
                if separator is not None:  # convert whole records only
                    data, cut = rest + data, (rest + data).rfind(separator) + 1
                    data, rest = data[:cut], data[cut:]
                member.write(convert(data))

    def discard(self) -> None:
        """Remove the temporary files (the output, if closed, stays)."""
        for handle in (self._embeddings, self._paths):
            with contextlib.suppress(OSError):
                handle.close()


def _utf32(path: bytes, width: int) -> bytes:
    """One path as a numpy ``<U`` cell: UTF-32, padded with zeros to ``width`` bytes."""
    return path.decode("utf-8", "surrogatepass").encode("utf-32-le", "surrogatepass").ljust(width, b"\0")
