"""``--ray [ADDRESS]``: ``geoscope features`` and ``geoscope predict -o`` as Ray Data jobs, here or on a cluster.

The images are read and decoded by Ray tasks (spread over the nodes), encoded by a pool of actors that each load
the encoder once and run it on one core, and come back to this process in their order, which writes them as it
does without Ray: ``features`` stores them in the feature cache's shards (claimed first, each written atomically,
so a rerun encodes only what is missing), ``predict`` answers them here and writes its chunks (one writer, whole
chunks, a rerun continues after the last). ``--shard K/N`` stays for schedulers that start plain processes.

Ray is an optional extra (``pip install 'geoscope[ray]'``), imported only when a command asks for it. Every node
reads the images (and a ``--model`` folder) under the paths this process gives: a shared folder.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..distributed import cpu_count, idle_thread_settings, use_small_pages
from ..encoders.image import get_image_encoder
from ..encoders.preprocess import Preprocess, Views
from ..encoders.runtime import Runtime
from ..errors import GeoscopeError, quote_name
from ..features.cache import BATCH_SIZE, WAIT_SECONDS, FeatureSet, ShardStore, load_views
from ..features.claims import WorkClaims
from ..models.image_side import TOP, ImageSide, apply_adapter
from .batch import Unit, predict_chunks, unit_runs

if TYPE_CHECKING:
    from ..encoders.image import ImageEncoder
    from ..predict import GeoModel

INSTALL = "--ray needs Ray, which is not installed: pip install 'geoscope[ray]'"
LOCAL_OBJECT_STORE = 512 << 20
"""Bytes of shared memory for the objects of a Ray instance started here (decoded batches: ~10 MB each at 224 px)."""
SEGMENT = 50_000
"""Images of a ``predict`` per Ray Data job: the job's list of paths stays small however long the input."""


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or one line saying how to install it."""
    try:
        import ray
        import ray.data  # the extra: ray[data]
    except ImportError:
        raise GeoscopeError(INSTALL) from None
    return ray


class RayCluster:
    """A Ray cluster (or a Ray instance of this process's own), joined when its first job starts, and the jobs
    run on it."""

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        self.address = address
        self.workers = workers
        """Encoder actors, one core each (``None``: one per two of the cluster's cores, once joined)."""
        self.started = False

    def encode_missing(self, todo: dict[bytes, Path], encoder: ImageEncoder, views: Views, store: ShardStore, *,
                       batch_size: int, shard_size: int, progress: bool, description: str,
                       **_: object) -> set[bytes]:
        """:data:`geoscope.features.cache.Encoding` on the cluster: the images of ``todo`` no other writer has
        claimed, encoded there and stored here a shard at a time (claimed, then released as each is written);
        those others claimed are waited for, as without Ray."""
        from tqdm import tqdm

        load = functools.partial(_encoder_outputs, encoder.name, encoder.backend, encoder.runtime, views)
        bar = tqdm(total=len(todo), unit="img", desc=description, disable=not progress, dynamic_ncols=True,
                   smoothing=0.1)
        encoded: set[bytes] = set()
        try:
            with WorkClaims(store.folder) as claims:
                remaining = list(todo)
                while remaining:
                    group = claims.claim(remaining, store.refresh, len(remaining))
                    if group:
                        rows = _Rows(self._encoded([str(todo[d]) for d in group], encoder.preprocess, views, load,
                                                   batch_size))
                        for start in range(0, len(group), shard_size):
                            digests = group[start:start + shard_size]
                            outputs, reasons = rows.take(len(digests))
                            store.write(digests, outputs, [r or None for r in reasons])
                            claims.release(digests)
                            encoded.update(digests)
                            bar.update(len(digests))
                    store.refresh()
                    remaining = [d for d in remaining if d not in store]
                    if remaining and not group:
                        bar.set_postfix_str(f"waiting for {len(remaining):,} images other processes claimed")
                        time.sleep(WAIT_SECONDS)
        finally:
            bar.close()
        return encoded

    def predict_chunks(self, model: GeoModel, units: Iterable[Unit],
                       **options: Any) -> Iterator[tuple[list[Unit], list[dict]]]:
        """:func:`geoscope.outputs.batch.predict_chunks` with the images' features from the cluster, answered here:
        the actors hold the model's image side alone (encoder, crops, fine-tuned top), never its head."""
        runtime = model.encoder.runtime  # resolved here: every actor computes the features the model reads here
        side = model.image_side
        top = {k: v for k, v in model.files.tensors.items() if k.startswith(TOP)}
        load = functools.partial(_model_features, side, top, runtime)
        views = Views(crops=side.crops)
        preprocess = model.encoder.preprocess
        for segment in unit_runs(units, SEGMENT):
            paths = [os.path.abspath(p) for unit in segment for p in unit.paths]
            rows = _Rows(self._encoded(paths, preprocess, views, load))
            yield from predict_chunks(model, segment, features=functools.partial(rows.features, model.encoder.name),
                                      **options)

    def _encoded(self, paths: Sequence[str], preprocess: Preprocess, views: Views,
                 load: Callable[[], Callable[[np.ndarray], np.ndarray]],
                 batch_size: int = BATCH_SIZE) -> Iterator[dict[str, np.ndarray]]:
        """Batches ``{"row", "output", "reason"}`` for ``paths`` (absolute), in order: decoded by tasks and encoded
        by :attr:`workers` actors (that each call ``load`` once for the function they encode with), ``batch_size``
        images at a time."""
        ray = self.start()
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        items = [{"row": i, "path": p} for i, p in enumerate(paths)]
        dataset = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / batch_size)))
        # each decoding task reserves the memory of the batch it makes, which also keeps Ray Data from fusing it
        # into the actors: decoding stays in tasks of its own, beside the encoders, spread over the nodes
        batch_bytes = batch_size * views.count * 3 * preprocess.crop_size ** 2 * 4
        dataset = dataset.map_batches(_decode, fn_kwargs={"preprocess": preprocess, "views": views},
                                      batch_size=batch_size, num_cpus=1, memory=batch_bytes)
        dataset = dataset.map_batches(_Encoder, fn_constructor_args=(load,), batch_size=batch_size, num_cpus=1,
                                      compute=ray.data.ActorPoolStrategy(size=self.workers))
        return dataset.iter_batches(batch_size=None, batch_format="numpy")


    def start(self) -> Any:
        """Join the cluster, once (``ray.init``); the ``ray`` module.

        :attr:`address` is the head's ``HOST:PORT`` (``auto``: the cluster ``ray start`` began on this machine);
        ``None`` starts a Ray instance for this command alone (or joins ``$RAY_ADDRESS``), with
        :data:`LOCAL_OBJECT_STORE` of shared memory and a core for decoding beside the encoders.
        """
        import logging

        ray = import_ray()
        if self.started:
            return ray
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a batch job reports nothing home
        local = self.address is None and not os.environ.get("RAY_ADDRESS")
        settings: dict[str, Any] = {"num_cpus": max(cpu_count(), (self.workers or 1) + 1),
                                    "object_store_memory": LOCAL_OBJECT_STORE} if local else {}
        try:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR, runtime_env={"env_vars": idle_thread_settings()}, **settings)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GeoscopeError(f"cannot start or reach a Ray cluster at {self.address or 'this machine'}: "
                                f"{why}") from None
        self.started = True
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # the command shows its progress and errors
        if self.workers is None:
            self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // 2)
        return ray

    def close(self) -> None:
        """Leave the cluster (a Ray instance started here ends with it)."""
        if self.started:
            import_ray().shutdown()
            self.started = False


@contextlib.contextmanager
def ray_cluster(address: str | None = None, workers: int | None = None) -> Iterator[RayCluster]:
    """A :class:`RayCluster` for the jobs of one command, joined by the first and left at the end; Ray's
    installation is checked now."""
    import_ray()
    cluster = RayCluster(address, workers)
    try:
        yield cluster
    finally:
        cluster.close()


class _Rows:
    """The rows of a Ray job's batches, in order, taken a few at a time."""

    def __init__(self, batches: Iterable[dict[str, np.ndarray]]) -> None:
        self._batches = iter(batches)
        self._left: dict[str, np.ndarray] | None = None
        self._next = 0

    def take(self, n: int) -> tuple[np.ndarray, list[str]]:
        """The next ``n`` rows' outputs and reasons (``""``: read)."""
        outputs, reasons = [], []
        while n > 0:
            if self._left is None or not len(self._left["row"]):
                self._left = _next_batch(self._batches)
            rows = self._left["row"][:n]
            if not np.array_equal(rows, np.arange(self._next, self._next + len(rows))):  # never silently misplaced
                raise RuntimeError(f"the Ray job gave back rows {rows[:3].tolist()}… where {self._next} was due")
            outputs.append(self._left["output"][:n])
            reasons += [str(r) for r in self._left["reason"][:n]]
            self._left = {k: v[len(rows):] for k, v in self._left.items()}
            self._next += len(rows)
            n -= len(rows)
        return np.concatenate(outputs) if outputs else np.zeros((0,), dtype=np.float32), reasons

    def features(self, encoder_name: str, chunk: list[Unit]) -> FeatureSet:
        """The next rows as the image features of ``chunk`` (every path of its units, in order), as
        :meth:`geoscope.predict.GeoModel.image_features` gives them."""
        paths = [str(Path(p).absolute()) for unit in chunk for p in unit.paths]
        outputs, reasons = self.take(len(paths))
        valid = np.array([not r for r in reasons], dtype=bool)
        embeddings = np.where(valid[:, None], outputs.reshape(len(paths), -1), np.nan).astype(np.float32)
        errors = [f"{quote_name(p)}: {r}" for p, r in zip(paths, reasons, strict=True) if r]
        return FeatureSet(embeddings, valid, errors, encoder_name, paths)


def _next_batch(batches: Iterator[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The next batch of a Ray job; its failure (a worker's error, a node lost) as one line."""
    try:
        return next(batches)
    except StopIteration:
        raise RuntimeError("the Ray job ended before every image came back") from None
    except Exception as exc:
        if not type(exc).__module__.startswith("ray"):
            raise
        text = str(exc)
        causes = re.findall(r"^(?:[\w.]+)?(?:Error|Exception): .+$", text, flags=re.MULTILINE)
        why = causes[-1] if causes else (text.strip().splitlines() or [type(exc).__name__])[0]
        raise GeoscopeError(f"the Ray job failed: {why} (every node needs this geoscope installed and the images "
                            "under the same paths)") from None


def _decode(batch: dict[str, np.ndarray], preprocess: Preprocess, views: Views) -> dict[str, np.ndarray]:
    """A Ray task: the images of ``batch["path"]`` decoded and preprocessed into their views (zeros, with the
    reason, where one cannot be read)."""
    c = preprocess.crop_size
    pixels = np.zeros((len(batch["path"]), views.count, 3, c, c), dtype=np.float32)
    reasons = [load_views(Path(path), preprocess, views, out=pixels[k])[1] or ""
               for k, path in enumerate(batch["path"])]
    return {**batch, "pixels": pixels, "reason": np.array(reasons, dtype=object)}


class _Encoder:
    """A Ray actor: loads its encoding function once, then encodes the images of each batch that were read."""

    def __init__(self, load: Callable[[], Callable[[np.ndarray], np.ndarray]]) -> None:
        use_small_pages()  # a process of Ray's, not started by ours: it does not inherit the setting
        self.encode = load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        read = np.array([not r for r in batch["reason"]], dtype=bool)
        encoded = self.encode(batch["pixels"][read])
        output = np.zeros((len(read), *encoded.shape[1:]), dtype=np.float32)
        output[read] = encoded
        return {"row": batch["row"], "output": output, "reason": batch["reason"]}


def _encoder_outputs(name: str, backend: str, runtime: Runtime,
                     views: Views) -> Callable[[np.ndarray], np.ndarray]:
    """For ``features``: images' views ``(n, views, 3, c, c)`` → the encoder's outputs ``(n, views, dim)``, as the
    cache stores them."""
    encoder = get_image_encoder(name, backend, "cpu", runtime, threads=1)
    c = encoder.preprocess.crop_size

    def encode(pixels: np.ndarray) -> np.ndarray:
        return encoder.encode(pixels.reshape(-1, 3, c, c)).reshape(len(pixels), views.count, encoder.dim)

    return encode


def _model_features(side: ImageSide, top: dict[str, np.ndarray],
                    runtime: Runtime) -> Callable[[np.ndarray], np.ndarray]:
    """For ``predict``: images' crops ``(n, crops, 3, c, c)`` → the image features a model reads ``(n, dim)``, as
    :meth:`geoscope.predict.GeoModel.view_features` computes them, from its image side and fine-tuned top."""
    encoder = get_image_encoder(side.cached_encoder, runtime=runtime, threads=1)
    adapter = side.stored_adapter(top)
    return lambda pixels: apply_adapter(adapter, side.encode_views(list(pixels), encoder))
