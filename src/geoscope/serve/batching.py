"""Dynamic micro-batching of uploads: decode in parallel, encode many requests as one batch.

Each request is admitted (or refused when ``capacity`` requests are already in flight),
its images are decoded and preprocessed on a thread pool, and the result joins a queue.
One thread takes what is queued, waits up to ``max_wait_ms`` for requests still being
decoded (never when none is), and encodes up to ``max_batch`` images in runs of ``encode_batch``; a
second thread answers each encoded run, with any others encoded meanwhile (requests with the same options
share one call of the model's answer path, :meth:`GeoModel.predict_features`, or of :meth:`GeoModel.verify_features` for
claim checks; views of one place fused per request) while the first encodes the next. A request that asks
where in each photo its answer comes from (:meth:`MicroBatcher.explain`) is encoded and answered the same
way; its occlusion maps (:func:`~geoscope.investigate.explain.explain_views`, 65 encoder runs a photo) are
made by the encoding thread right after its run, so they never compete with other batches for the CPU.
Uploads never touch the feature cache: the model answers from features computed here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import functools
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..distributed import cores_per_process
from ..errors import BadImageError
from ..features.cache import FeatureSet
from ..investigate.explain import Box, Explanation, Frame, explain_views, read_frame
from ..predict import GeoModel, Prediction, Verdict
from ..threads import math_threads


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def release_memory() -> None:
    """Give the heap's free pages back to the system (glibc keeps a freed decode buffer of hundreds of MB in its
    arenas otherwise, and the server's memory stays at its peak)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


class Busy(Exception):
    """Too many requests in flight: the caller should answer 503 and ask the client to retry."""


TRIM_BYTES = 1 << 20
"""An upload whose body or decoded pixels reached this many bytes gives the heap back after its decode
(:func:`release_memory`). Smaller ones leave little to give back, and a trim after each of them cost as much CPU as
their decode (224 px photos, 8 clients: 1.0–1.4 ms of the decoding threads' time a request with it, 0.5 without)."""


def decode_upload(data: bytes, name: str, model: GeoModel) -> Frame:
    """One uploaded image as the model reads it (:func:`~geoscope.investigate.explain.read_frame`);
    :class:`BadImageError` naming it."""
    try:
        return read_frame(model, data)
    except BadImageError as exc:
        reason = str(exc).removeprefix("<bytes>: ")
        raise BadImageError(f"{name}: {reason}") from None


@dataclass
class Ticket:
    """One admitted request; ``decoded`` once its images have joined (or left) the queue's way."""

    decoded: bool = False


@dataclass
class _Job:
    names: list[str]
    arrays: list[np.ndarray | None]
    errors: list[str | None]
    options: dict
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    features: FeatureSet | None = None
    boxes: list[list[Box] | None] = field(default_factory=list)
    explain: bool = False
    """Also map where in each photo its answer comes from (:func:`~geoscope.investigate.explain.explain_views`)."""
    explanations: list[Explanation | None] = field(default_factory=list)


@dataclass
class BatchStats:
    """What the workers did: sizes of the last batches and of the last calls of the answer path (images), and
    totals."""

    recent_sizes: collections.deque = field(default_factory=lambda: collections.deque(maxlen=1000))
    recent_answers: collections.deque = field(default_factory=lambda: collections.deque(maxlen=1000))
    batches: int = 0
    images: int = 0
    requests: int = 0
    refused: int = 0
    answer_calls: int = 0

    def to_dict(self) -> dict:
        sizes = list(self.recent_sizes.copy())  # copy() is atomic; the worker threads append
        answers = list(self.recent_answers.copy())
        return {"batches": self.batches, "images": self.images, "requests": self.requests, "refused": self.refused,
                "answer_calls": self.answer_calls, "largest_recent_batch": max(sizes, default=0),
                "mean_recent_batch": round(float(np.mean(sizes)), 2) if sizes else 0.0,
                "mean_recent_answer": round(float(np.mean(answers)), 2) if answers else 0.0}


class MicroBatcher:
    """Admits requests, decodes their images in parallel and encodes them in shared batches."""

    def __init__(self, model: GeoModel, *, max_batch: int = 16, encode_batch: int = 8, max_wait_ms: float = 5.0,
                 capacity: int = 64, decode_workers: int | None = None) -> None:
        if max_batch < 1 or encode_batch < 1 or capacity < 1 or max_wait_ms < 0:
            raise ValueError("max_batch, encode_batch and capacity must be at least 1, max_wait_ms at least 0")
        self.model = model
        self.max_batch = max_batch
        self.encode_batch = encode_batch
        self.max_wait = max_wait_ms / 1000.0
        self.capacity = capacity
        self.stats = BatchStats()
        self._decode_workers = decode_workers or cores_per_process()
        self._in_flight = 0  # admitted and not yet answered (changed on the event loop only)
        self._arriving = 0  # admitted and not yet queued: what a batch may wait for
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._pool: ThreadPoolExecutor | None = None
        self._answers: queue.Queue[list[_Job] | None] = queue.Queue(maxsize=8)  # encoded runs, to answer
        self._workers: list[threading.Thread] = []
        self._math_threads = contextlib.ExitStack()

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet answered."""
        return self._in_flight

    def start(self) -> None:
        """Load the encoder (one warm-up batch); start the decode pool, the encoding and answering threads."""
        if self._workers:
            return
        # The answer's products (torch) on this process's cores: with 8 clients the answer mostly runs while nothing
        # encodes (8 clients, bf16: 175.7 -> 197.2 requests/s; 1 client level). BLAS keeps one thread: on two, it
        # spun against the encoder (an answer call of 8 rows 46-55 ms instead of 20).
        self._math_threads.enter_context(math_threads(cores_per_process()))
        c = self.model.encoder.preprocess.crop_size
        self.model.view_features([np.zeros((self.model.image_side.crops, 3, c, c), np.float32)], 1)
        self._pool = ThreadPoolExecutor(self._decode_workers, thread_name_prefix="geoscope-serve-decode")
        self._workers = [threading.Thread(target=self._collect, name="geoscope-serve-encode", daemon=True),
                         threading.Thread(target=self._answer_all, name="geoscope-serve-answer", daemon=True)]
        for worker in self._workers:
            worker.start()

    def close(self) -> None:
        """Stop the workers after the queued requests and shut the decode pool down."""
        if self._workers:
            self._queue.put(None)
            for worker in self._workers:
                worker.join()
            self._workers = []
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._math_threads.close()

    @contextlib.contextmanager
    def admit(self) -> Iterator[Ticket]:
        """Hold one of ``capacity`` places for a request; raises :class:`Busy` when none is free."""
        if self._in_flight >= self.capacity:
            self.stats.refused += 1
            raise Busy(f"{self._in_flight} requests in flight, the limit is {self.capacity}")
        self._in_flight += 1
        self._arriving += 1
        ticket = Ticket()
        try:
            yield ticket
        finally:
            self._in_flight -= 1
            if not ticket.decoded:
                self._arriving -= 1

    async def predict(self, ticket: Ticket, images: Sequence[tuple[str, bytes]],
                      **options: object) -> list[Prediction]:
        """Predictions for uploaded ``(name, bytes)`` images of a request admitted with ``ticket``.

        ``options`` go to the model's ``predict_features`` (``top_k``, ``views``, and any others it
        accepts; ``answer`` names another method of the model that answers from features, such as
        ``verify_features``). Images that cannot be decoded come back as predictions with ``error``.
        """
        return await self._submit(ticket, images, options, explain=False)

    async def explain(self, ticket: Ticket, images: Sequence[tuple[str, bytes]],
                      **options: object) -> list[tuple[Prediction, Explanation | None]]:
        """:meth:`predict` for single photos, each with its occlusion map (``None`` where it cannot be read):
        ``grid``² + 1 more encoder runs per photo, run by the encoding thread between the other requests' batches."""
        return await self._submit(ticket, images, options, explain=True)

    async def _submit(self, ticket: Ticket, images: Sequence[tuple[str, bytes]], options: dict,
                      explain: bool) -> list:
        if self._pool is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        loop = asyncio.get_running_loop()
        try:
            decoded = await asyncio.gather(*(loop.run_in_executor(self._pool, self._decode, data, name)
                                             for name, data in images))
        finally:
            ticket.decoded = True
            self._arriving -= 1
        future = loop.create_future()
        job = _Job([name for name, _ in images], [d.views if d else None for d, _ in decoded],
                   [e for _, e in decoded], dict(options), loop, future,
                   boxes=[d.boxes if d else None for d, _ in decoded], explain=explain)
        self._queue.put(job)
        return await future

    async def verify(self, ticket: Ticket, images: Sequence[tuple[str, bytes]], **options: object) -> list[Verdict]:
        """Claim checks for uploaded images, batched with the predictions: ``options`` go to the model's
        :meth:`~geoscope.predict.GeoModel.verify_features` (``lat``, ``lon``, ``km``, ``views``, …)."""
        return await self.predict(ticket, images, answer="verify_features", **options)

    def _decode(self, data: bytes, name: str) -> tuple[Frame | None, str | None]:
        decoded = TRIM_BYTES  # a failed decode may have held any amount
        try:
            frame = decode_upload(data, name, self.model)
            decoded = frame.pixel_bytes
            return frame, None
        except BadImageError as exc:
            return None, str(exc)
        finally:
            if max(len(data), decoded) >= TRIM_BYTES:
                release_memory()

    # --- the worker threads: one encodes batches, the other answers them (the two overlap) ---

    def _collect(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                self._answers.put(None)
                return
            batch = [job]
            size = job_size(job)
            deadline = time.perf_counter() + self.max_wait
            while size < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0 or self._arriving <= 0:  # nothing on its way: do not wait
                        break
                    try:
                        job = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                if job is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(job)
                size += job_size(job)
            self._encode(batch)

    def _encode(self, batch: list[_Job]) -> None:
        images = sum(job_size(job) for job in batch)
        self.stats.batches += 1
        self.stats.images += images
        self.stats.requests += len(batch)
        self.stats.recent_sizes.append(images)
        # Run by run: each run's requests are answered (by the other thread) while the next one encodes.
        for run in encoder_runs(batch, self.encode_batch):
            arrays = [a for job in run for a in job.arrays if a is not None]
            try:
                features = self.model.view_features(arrays, self.encode_batch)
            except Exception as exc:  # the encoder failed: every request of the run fails with it
                for job in run:
                    _resolve(job, exception=exc)
                continue
            start = 0
            for job in run:
                valid = np.array([a is not None for a in job.arrays], dtype=bool)
                rows = np.full((len(job.arrays), features.shape[1]), np.nan, dtype=np.float32)
                rows[valid] = features[start:start + int(valid.sum())]
                start += int(valid.sum())
                job.features = FeatureSet(embeddings=rows, valid=valid,
                                          errors=[e for e in job.errors if e is not None],
                                          encoder_name=self.model.encoder.name, paths=job.names)
                if job.explain:  # here, on the encoder's thread: no other batch encodes meanwhile
                    try:
                        job.explanations = [None if a is None else explain_views(self.model, a, name, boxes,
                                                                                 batch_size=self.encode_batch)
                                            for a, name, boxes in zip(job.arrays, job.names, job.boxes, strict=True)]
                    except Exception as exc:  # this request fails (as when the encoder fails), the others go on
                        job.explanations = [None] * len(job.arrays)
                        _resolve(job, exception=exc)
                job.arrays = []  # the pixels are no longer needed
            self._answers.put(run)

    def _answer_all(self) -> None:
        while (batch := self._answers.get()) is not None:
            # Runs encoded while the last ones were answered are answered with this one: a call of the answer path
            # reads every head's weights (8.7 ms for one image on one thread, 18.9 for eight, 39 for 64).
            stop = False
            while not stop:
                try:
                    more = self._answers.get_nowait()
                except queue.Empty:
                    break
                stop = more is None
                batch += more or []
            # Requests with the same options share one call of the answer path (with views: one place each).
            groups: dict[str, list[_Job]] = collections.defaultdict(list)
            for job in batch:
                groups[repr(sorted(job.options.items()))].append(job)  # explained or not, one answer path
            for jobs in groups.values():
                self._answer(jobs)
            if stop:
                return

    def _answer(self, jobs: list[_Job]) -> None:
        features = [job.features for job in jobs if job.features is not None]
        merged = features[0] if len(features) == 1 else FeatureSet(
            embeddings=np.concatenate([f.embeddings for f in features]),
            valid=np.concatenate([f.valid for f in features]), errors=[e for f in features for e in f.errors],
            encoder_name=features[0].encoder_name, paths=[p for f in features for p in f.paths])
        self.stats.answer_calls += 1
        self.stats.recent_answers.append(len(merged.paths))
        options = dict(jobs[0].options)
        answer = getattr(self.model, options.pop("answer", "predict_features"))  # or verify_features
        views = bool(options.get("views"))
        places = np.repeat(np.arange(len(features)), [len(f.paths) for f in features]) if views else None
        try:
            predictions = answer(merged, merged.paths, places=places, **options)
        except Exception as exc:
            for job in jobs:
                _resolve(job, exception=exc)
            return
        start = 0
        for job in jobs:
            count = 1 if job.options.get("views") else len(job.names)
            result = predictions[start:start + count]
            _resolve(job, result=list(zip(result, job.explanations, strict=True)) if job.explain else result)
            start += count


def encoder_runs(batch: list[_Job], size: int) -> Iterator[list[_Job]]:
    """Consecutive requests of a batch grouped into runs of at most ``size`` images (a larger request alone)."""
    run: list[_Job] = []
    images = 0
    for job in batch:
        if run and images + job_size(job) > size:
            yield run
            run, images = [], 0
        run.append(job)
        images += job_size(job)
    if run:
        yield run


def job_size(job: _Job) -> int:
    """Images of one request that need encoding."""
    return sum(a is not None for a in job.arrays)


def _resolve(job: _Job, *, result: object = None, exception: BaseException | None = None) -> None:
    def settle() -> None:
        if job.future.done():  # the client went away
            return
        if exception is not None:
            job.future.set_exception(exception)
        else:
            job.future.set_result(result)

    job.loop.call_soon_threadsafe(settle)
