"""The HTTP API and page: a FastAPI application around one loaded model.

``POST /predict`` takes the image bytes as the body, or a multipart form with one or more
files (``views=true`` fuses them as views of one place; ``explain=true`` adds each photo's occlusion map,
:mod:`geoscope.investigate.explain`; ``evidence=K`` the K training places most like it, each with the
address of its photo's thumbnail, ``GET /gallery/<row>.jpg``, where the bundle recorded the photo and this
machine has it); ``POST /verify?lat=&lon=&km=`` takes the same and checks the claim that each photo (or
place) was taken within ``km`` of the point; ``GET /health``, ``GET /model``, ``GET /model/places``,
``GET /countries.geojson``, ``GET /regions.geojson`` (approximate first-level borders and larger places,
:mod:`geoscope.serve.page`) and the page at ``/``. The replies' schemas are derived from
:class:`~geoscope.predict.Prediction`, :class:`~geoscope.answer.verify.Verdict` and the dataclasses they hold.
Every error is JSON ``{"error": "..."}``. Bodies are limited in size and must arrive within
``body_timeout`` seconds of silence; when ``queue`` requests are in flight the next one
gets 503 with ``Retry-After``; occlusion maps take their places in the same queue and run on the
encoder's thread between the other requests' batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..answer.refine import REFINERS
from ..answer.verify import DEFAULT_KM, MAX_KM, Verdict
from ..errors import GeoscopeError
from ..investigate.explain import GRID
from ..loading import load_any_model
from ..predict import GeoModel, Prediction
from .batching import Busy, MicroBatcher, Ticket
from .page import (
    MAX_MAP_COUNTRIES,
    WEB_ASSETS,
    countries_geojson,
    gallery_thumbnail,
    model_countries,
    model_places,
    model_summary,
    regions_geojson,
)

LOG = logging.getLogger("geoscope.serve")
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_EVIDENCE = 20
MAX_FILES = 16
MAX_EXPLAIN = 4
"""Most photos one ``explain=true`` request maps (each costs 65 encoder runs)."""


@dataclass(frozen=True)
class ServeSettings:
    """How the service batches, queues and guards its input."""

    max_batch: int = 16
    """Most images in one micro-batch (encoded together, answered together)."""
    encode_batch: int = 8
    """Most images per run of the encoder: the micro-batch is encoded, then answered, in runs of this many. Each
    answer call reads every head's weights once (~57 MB for the default model), so runs of 8 served 8 clients
    with 8–10 % less CPU a request than runs of 4 on 2 cores, with either runtime (``benchmarks/serve.py
    --variant``)."""
    max_wait_ms: float = 5.0
    """Longest a batch waits for requests still being decoded."""
    queue: int = 64
    """Most requests in flight (reading, decoding, queued or encoding); more get 503."""
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    body_timeout: float = 5.0
    """Seconds of silence allowed while a request body is arriving."""
    body_grace: float = 10.0
    body_min_rate: float = 50_000.0
    """A body must arrive within ``body_grace`` seconds plus its size over this rate (bytes/s): a client trickling
    a byte now and then is cut with 408 instead of holding its connection for as long as it likes."""
    uploads: int = 256
    """Most request bodies arriving at once; they do not hold places of the encoding ``queue``."""
    decode_workers: int | None = None
    """Threads decoding uploads (default: one per core)."""


@dataclass
class Gauge:
    """How many of something are in progress, against a limit (changed on the event loop only)."""

    limit: int
    count: int = 0

    @property
    def full(self) -> bool:
        return self.count >= self.limit

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Count one in progress for the block."""
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1


@dataclass(frozen=True)
class PredictionsReply:
    """Several files sent without ``views=true``: one answer each."""

    predictions: list[Prediction]


@dataclass(frozen=True)
class VerdictsReply:
    """Several files sent to ``/verify`` without ``views=true``: one verdict each."""

    verdicts: list[Verdict]


@dataclass(frozen=True)
class ErrorReply:
    error: str


@dataclass(frozen=True)
class WhereInThePhoto:
    """``explain=true``: how much hiding each cell of a grid over the frame the model reads lowers the log-odds of
    the answer's label and of its country (:class:`geoscope.investigate.explain.Explanation`)."""

    image: str
    label: str
    country: str
    probability: float
    country_probability: float
    label_drop: list[list[float]]
    """Rows top to bottom, each a row of cells left to right: positive where the cell points to the answer."""
    country_drop: list[list[float]]
    boxes: list[list[float]]
    """Where the frame lies in the photo: ``[left, top, right, bottom]`` as fractions of its width and height,
    one box per crop the model reads (each had the same cell hidden)."""


@dataclass
class ExplainedPrediction(Prediction):
    """A photo's answer with ``explain=true``: its occlusion map too (``None`` where it could not be read)."""

    explanation: WhereInThePhoto | None = None


_UPLOAD_BODY = {
    "required": True,
    "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    },
}


def create_app(model: GeoModel | str | os.PathLike[str] | None = None,
               settings: ServeSettings | None = None) -> FastAPI:
    """The application serving ``model`` (a loaded :class:`GeoModel`, a bundle directory, a CLIP checkpoint
    used zero-shot, or the default)."""
    settings = settings or ServeSettings()
    if not isinstance(model, GeoModel):
        model = load_any_model(model)
    batcher = MicroBatcher(model, max_batch=settings.max_batch, encode_batch=settings.encode_batch,
                           max_wait_ms=settings.max_wait_ms,
                           capacity=settings.queue, decode_workers=settings.decode_workers)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(batcher.start)
        asyncio.get_running_loop().run_in_executor(None, countries_geojson)  # the page's base map, made once
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.close)

    app = FastAPI(
        title="geoscope", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        description="Where was this street-level photo taken? Ranked guesses from the pixels alone.",
    )
    app.state.model = model
    app.state.batcher = batcher
    app.state.settings = settings
    app.add_middleware(BodyGuard, max_bytes=settings.max_upload_bytes, timeout=settings.body_timeout,
                       grace=settings.body_grace, min_rate=settings.body_min_rate)
    app.state.uploads = uploads = Gauge(settings.uploads)  # bodies arriving now
    _add_error_handlers(app, settings)

    async def answered(request: Request, plural: str,
                       answer: Callable[[Ticket, list[tuple[str, bytes]]], Awaitable[list[dict]]],
                       most: int = MAX_FILES, why: str = "") -> JSONResponse:
        """The reply to an upload: its body read (before the request takes a place in the encoding queue), then
        ``answer`` for an admitted ticket; one result as itself, several as ``{plural: [...]}``. A request of more
        than ``most`` files is refused, saying ``why``."""
        if uploads.full:
            await _drain(request)
            return _busy()
        with uploads.held():
            images = await _read_images(request)
        if len(images) > most:
            raise HTTPException(400, f"{len(images)} files: {why}")
        try:
            with batcher.admit() as ticket:
                answers = await answer(ticket, images)
        except Busy:
            return _busy()
        if all(a.get("error") for a in answers):
            raise HTTPException(400, "; ".join(a["error"] for a in answers))
        if len(answers) == 1:
            return JSONResponse(answers[0])
        return JSONResponse({plural: answers})

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB_ASSETS / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/health", summary="Is the service up, and how busy")
    async def health() -> dict:
        return {"status": "ok", "model": model.config.get("name"), "labels": len(model.labels),
                "in_flight": batcher.in_flight, "queue_limit": batcher.capacity, "uploading": uploads.count,
                "max_batch": batcher.max_batch, "batching": batcher.stats.to_dict()}

    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)

    @app.get("/model", summary="The model: name, encoder, labels, coverage and model card")
    async def model_info() -> dict:
        return model_summary(model)

    @app.get("/model/places", summary="The places the model knows (its labels), with coordinates")
    async def places() -> dict:
        return {"places": model_places(model)}

    @app.get("/countries.geojson", summary="Country outlines for the page's map (Natural Earth, simplified)")
    async def countries(request: Request) -> Response:
        return _geojson(request, await asyncio.to_thread(countries_geojson))

    @app.get("/regions.geojson", summary="Approximate first-level borders (drawn from GeoNames towns), region names "
             "and larger places of some countries, for the page's map",
             responses={400: {"model": ErrorReply}, 422: {"model": ErrorReply}})
    async def regions(request: Request, countries: Annotated[str | None, Query(
            pattern=r"^\s*[A-Za-z]{2}\s*(,\s*[A-Za-z]{2}\s*)*$",
            description=f"ISO 3166-1 alpha-2 codes, comma-separated, at most {MAX_MAP_COUNTRIES} "
                        "(default: the model's countries)")] = None) -> Response:
        codes = [c.strip().upper() for c in countries.split(",")] if countries else model_countries(model)
        if len(set(codes)) > MAX_MAP_COUNTRIES:
            raise HTTPException(422, f"countries: at most {MAX_MAP_COUNTRIES} at once, not {len(set(codes))}")
        return _geojson(request, await asyncio.to_thread(regions_geojson, codes))  # made on first request

    @app.get("/gallery/{row}.jpg", summary="A thumbnail of a training photo that evidence names, by its gallery row",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": ErrorReply}})
    async def gallery_photo(row: int) -> Response:
        thumbnail = await asyncio.to_thread(gallery_thumbnail, model, row)
        if thumbnail is None:
            return JSONResponse({"error": f"no training photo of gallery row {row} on this server"}, status_code=404)
        return Response(thumbnail, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.post(
        "/predict", summary="Guess where a photo (or several views of one place) was taken",
        openapi_extra={"requestBody": _UPLOAD_BODY},
        responses={200: {"model": Prediction | ExplainedPrediction | PredictionsReply}, 400: {"model": ErrorReply},
                   413: {"model": ErrorReply}, 422: {"model": ErrorReply}, 503: {"model": ErrorReply}},
    )
    async def predict(
        request: Request,
        top_k: Annotated[int, Query(ge=1, le=50, description="guesses per answer")] = 5,
        level: Annotated[Literal["country", "region", "place"],
                         Query(description="guess places, or regions, or countries")] = "place",
        refine: Annotated[Literal[REFINERS] | None, Query(
            description="move each guess to a point inside it (default: the model's choice)")] = None,
        views: Annotated[bool, Query(description="the files are views of one place: fuse them")] = False,
        allow_missing_views: Annotated[bool, Query(
            description="with views: answer from the readable views if some cannot be read (with a warning)")] = False,
        evidence: Annotated[int, Query(ge=0, le=MAX_EVIDENCE, description="also list this many training places "
                                       "whose photos are most like the photo")] = 0,
        explain: Annotated[bool, Query(description=f"also map where in each photo the answer comes from (hiding "
                                       f"each of {GRID * GRID} cells in turn: {GRID * GRID + 1} encoder runs per "
                                       f"photo; single photos, at most {MAX_EXPLAIN})")] = False,
    ) -> JSONResponse:
        if explain and views:
            await _drain(request)
            return JSONResponse({"error": "explain maps single photos: leave out views"}, status_code=422)
        options = {"top_k": top_k, "views": views, "level": level, "refine": refine,
                   "allow_missing_views": allow_missing_views, "evidence": evidence}

        async def answer(ticket: Ticket, images: list[tuple[str, bytes]]) -> list[dict]:
            if not explain:
                return [_with_thumbnails(p.to_dict()) for p in await batcher.predict(ticket, images, **options)]
            explained = await batcher.explain(ticket, images, **options)
            return [_with_thumbnails(p.to_dict()) | ({} if e is None else {"explanation": e.to_dict()})
                    for p, e in explained]

        return await answered(request, "predictions", answer, MAX_EXPLAIN if explain else MAX_FILES,
                              f"explain maps at most {MAX_EXPLAIN} photos a request")

    @app.post(
        "/verify", summary="Check the claim that a photo (or several views of one place) was taken near a point",
        openapi_extra={"requestBody": _UPLOAD_BODY},
        responses={200: {"model": Verdict | VerdictsReply}, 400: {"model": ErrorReply}, 413: {"model": ErrorReply},
                   422: {"model": ErrorReply}, 501: {"model": ErrorReply}, 503: {"model": ErrorReply}},
    )
    async def verify(
        request: Request,
        lat: Annotated[float, Query(ge=-90, le=90, allow_inf_nan=False, description="the claimed point's latitude")],
        lon: Annotated[float, Query(ge=-180, le=180, allow_inf_nan=False,
                                    description="the claimed point's longitude")],
        km: Annotated[float, Query(gt=0, le=MAX_KM, allow_inf_nan=False,
                                   description="the claim: within this many km of the point")] = DEFAULT_KM,
        views: Annotated[bool, Query(description="the files are views of one place: one verdict")] = False,
        allow_missing_views: Annotated[bool, Query(
            description="with views: judge from the readable views if some cannot be read (with a warning)")] = False,
    ) -> JSONResponse:
        try:
            model.claim_check  # noqa: B018 (refused before the body is read)
        except GeoscopeError as exc:
            await _drain(request)
            message = " ".join(str(exc).replace(str(model.path), f"model {model.config.get('name', '')!r}").split())
            return JSONResponse({"error": message}, status_code=501)
        async def answer(ticket: Ticket, images: list[tuple[str, bytes]]) -> list[dict]:
            return [v.to_dict() for v in await batcher.verify(ticket, images, lat=lat, lon=lon, km=km, views=views,
                                                             allow_missing_views=allow_missing_views)]

        return await answered(request, "verdicts", answer)

    app.mount("/static", StaticFiles(directory=WEB_ASSETS), name="static")
    return app


def _geojson(request: Request, body: bytes) -> Response:
    """Gzipped GeoJSON as it is for a client that takes gzip, unzipped for one that does not."""
    headers = {"Cache-Control": "public, max-age=86400", "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        return Response(body, media_type="application/geo+json", headers={**headers, "Content-Encoding": "gzip"})
    return Response(gzip.decompress(body), media_type="application/geo+json", headers=headers)


def _with_thumbnails(answer: dict) -> dict:
    """An answer as the API sends it: each evidence's photo as the address of its thumbnail (never a path on the
    server), where the server has the photo."""
    for item in answer.get("evidence") or []:
        item["image"] = f"gallery/{item['gallery_row']}.jpg" if item.get("image") else None
    return answer


async def _read_images(request: Request) -> list[tuple[str, bytes]]:
    """The uploaded images as ``(name, bytes)``: the raw body, or every file of a multipart form."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        async with request.form(max_files=MAX_FILES, max_fields=MAX_FILES) as form:
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            images = [(upload_name(f.filename, i), await f.read()) for i, f in enumerate(files)]
        if not images:
            raise HTTPException(400, "the multipart form holds no file: send images as file fields")
    else:
        images = [("upload", await request.body())]
    for name, data in images:
        if not data:
            raise HTTPException(400, f"{name}: empty upload: send the image bytes as the request body "
                                     "or as files of a multipart form")
    return images


_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def upload_name(filename: str | None, index: int) -> str:
    """A printable name for an uploaded file (its base name, at most 120 characters)."""
    base = re.split(r"[\\/]", filename or "")[-1]
    base = _UNSAFE.sub("?", base).strip()[:120]
    return base or f"upload-{index + 1}"


def _busy() -> JSONResponse:
    return JSONResponse({"error": "busy: too many requests in flight, retry in a second"}, status_code=503,
                        headers={"Retry-After": "1"})


async def _drain(request: Request) -> None:
    """Read and drop a refused request's body, so that closing the connection does not reset it."""
    with contextlib.suppress(Exception):
        async for _ in request.stream():
            pass


def _add_error_handlers(app: FastAPI, settings: ServeSettings) -> None:
    @app.exception_handler(ClientDisconnect)
    async def hung_up(request: Request, exc: ClientDisconnect) -> Response:
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        LOG.info("%s hung up before its request %s %s was read", client, request.method, request.url.path)
        return Response(status_code=400)  # nobody is listening: never sent

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no such path {request.url.path}"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            message = f"method {request.method} not allowed on {request.url.path}" + \
                (f" (use {allowed})" if allowed else "")
        elif exc.status_code == 413:
            message = f"request body over the {settings.max_upload_bytes / 2**20:g} MiB limit"
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "body"))
            parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg")))
        return JSONResponse({"error": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(GeoscopeError)
    async def refused(request: Request, exc: GeoscopeError) -> JSONResponse:
        model = request.app.state.model  # name the model, not where it lives on the server
        message = str(exc).replace(str(model.path), f"model {model.config.get('name', '')!r}")
        return JSONResponse({"error": " ".join(message.split())}, status_code=400)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)


class BodyGuard:
    """ASGI middleware: a request body must stay under ``max_bytes`` and keep arriving.

    A body announced (``Content-Length``) or grown over the limit gets 413; a client that goes silent for
    ``timeout`` seconds mid-body (say, one that promised more bytes than it sends), or whose body takes longer
    than ``grace`` seconds plus its size over ``min_rate``, gets 408. Both close the connection instead of
    holding a worker.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float, grace: float = 10.0,
                 min_rate: float = 50_000.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.grace = grace
        self.min_rate = min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        announced = dict(scope["headers"]).get(b"content-length", b"").strip()
        too_large = announced.isdigit() and int(announced) > self.max_bytes
        complete, received = False, 0
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def guarded_receive() -> Message:
            nonlocal complete, received
            if complete:
                return await receive()
            if too_large:
                raise HTTPException(413, headers={"Connection": "close"})
            left = start + self.grace + received / self.min_rate - loop.time()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, min(self.timeout, left)))
            except TimeoutError:
                said = f"stalled for {self.timeout:g} s" if left > self.timeout else \
                    f"arrived slower than {self.min_rate / 1000:g} kB/s"
                raise HTTPException(408, f"request body {said}", headers={"Connection": "close"}) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, headers={"Connection": "close"})
            return message

        await self.app(scope, guarded_receive, send)
