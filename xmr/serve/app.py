"""The FastAPI application of ``xmr serve``: ``POST /search``, ``GET /health``, ``GET /info``, the page at ``/``.

One app serves one predictor folder (label index, sharded index, ...), opened memory-mapped so that the worker
processes uvicorn starts share its pages instead of each holding a copy. Searches run in one search thread per
process (the encoder's tokenizer and the torch forward are not safe to share between threads), which answers the
requests that waited together with one batched search (:class:`Searcher`); the event loop stays free for
``/health`` and for refusing what is over the limits:

- body larger than ``max_body_bytes``: 413; more than ``max_queries`` queries, ``k`` above ``max_k``, a query text
  longer than ``max_text_chars``, an unknown field or a wrong type: 422 with one line naming the field;
- input the predictor refuses (a blank query, an unknown knob, an image for a text-only encoder): 400 with its
  message; a search that takes longer than ``timeout_s``: 504 (the thread finishes in the background, its answer
  is dropped).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from xmr._version import __version__
from xmr.errors import XMRError
from xmr.predictor import Predictor, as_items, load_predictor, use_fast_queries
from xmr.serve.page import PAGE


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; anything above is refused with a 4xx before any work is done."""

    max_queries: int = 64
    max_k: int = 1000
    max_text_chars: int = 2000
    max_body_bytes: int = 4 << 20
    max_image_bytes: int = 8 << 20
    timeout_s: float = 30.0


class Query(BaseModel):
    """A query with an image: ``image`` is the image file's bytes, base64 (a ``data:`` URL prefix is accepted)."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    image: str | None = None


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: list[str | Query] = Field(min_length=1, description="query texts or {text, image} objects")
    k: int = Field(10, ge=1, description="labels per query")
    params: dict[str, int] = Field(default_factory=dict,
                                   description="search knobs for this request, e.g. {\"nprobe\": 32}")


class Hit(BaseModel):
    id: int | str
    text: str
    score: float


class SearchResponse(BaseModel):
    results: list[list[Hit]]


class BadRequest(XMRError):
    """A request the limits refuse (answered 422 with this message)."""


def _check(request: SearchRequest, limits: Limits) -> None:
    if len(request.queries) > limits.max_queries:
        raise BadRequest(f"queries: {len(request.queries)} queries, at most {limits.max_queries} per request")
    if request.k > limits.max_k:
        raise BadRequest(f"k: {request.k} is above this service's limit of {limits.max_k}")
    for number, query in enumerate(request.queries):
        text = query if isinstance(query, str) else query.text or ""
        if len(text) > limits.max_text_chars:
            raise BadRequest(f"queries.{number}: {len(text)} characters, at most {limits.max_text_chars}")


def has_images(request: SearchRequest) -> bool:
    return any(not isinstance(query, str) and query.image is not None for query in request.queries)


def _decode_image(data: str, number: int, limit: int, folder: Path) -> str:
    """Write a base64 image to a file in ``folder`` (encoders read image paths); returns the path."""
    payload = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"queries.{number}.image: not base64 data") from None
    if len(raw) > limit:
        raise BadRequest(f"queries.{number}.image: {len(raw)} bytes, at most {limit}")
    path = folder / f"query-{number}"
    path.write_bytes(raw)
    return str(path)


@dataclass
class _Job:
    """One request's checked queries, waiting for a search; ``folder`` holds its images until it is answered."""

    items: list[Any]
    k: int
    params: dict[str, int]
    folder: tempfile.TemporaryDirectory | None
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple:
        return self.k, tuple(sorted(self.params.items()))


class Searcher:
    """The predictor behind one search thread, with opportunistic batching.

    Only that thread calls the predictor (the encoder's tokenizer and the torch forward are not safe to share
    between threads). Requests that arrive while a search runs wait in a queue; the next search answers the waiting
    ones that ask for the same ``k`` and knobs with one ``predict`` call over all their queries, up to
    ``batch_queries`` queries: one encoder forward and one index search instead of one per request, which is most
    of what many small requests cost on a CPU (``scripts/bench_serve.py``). Nothing waits for a batch to fill, so a
    lone request is searched as soon as it arrives. When a merged search fails, each of its requests is searched
    alone, so an error reaches only the request that caused it. ``batch_queries=1`` searches one request at a time.
    """

    def __init__(self, predictor: Predictor, limits: Limits, batch_queries: int = 64) -> None:
        if batch_queries < 1:
            raise XMRError(f"batch_queries must be at least 1, got {batch_queries}")
        self.predictor = predictor
        self.limits = limits
        self.batch_queries = batch_queries
        self._pending: list[_Job] = []
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, request: SearchRequest) -> Future:
        """Check and queue one request; errors of this request alone (an image for a text-only encoder, a blank
        query) are raised here. The future gets its records; cancelling it before its search starts drops it.
        Images are written to a temporary folder that lives until the request is answered."""
        folder = tempfile.TemporaryDirectory(prefix="xmr-serve-") if has_images(request) else None
        try:
            items = self._items(request, Path(folder.name) if folder else None)
            as_items(items)  # a blank query is refused here, numbered within its own request
        except BaseException:
            if folder:
                folder.cleanup()
            raise
        job = _Job(items, request.k, dict(request.params), folder)
        if folder:
            job.future.add_done_callback(lambda _: folder.cleanup())
        with self._ready:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="xmr-search", daemon=True)
                self._thread.start()
            self._pending.append(job)
            self._ready.notify()
        return job.future

    def _items(self, request: SearchRequest, folder: Path | None) -> list[Any]:
        encoder = getattr(self.predictor, "encoder", None)
        items: list[Any] = []
        for number, query in enumerate(request.queries):
            if isinstance(query, str) or query.image is None:
                items.append(query if isinstance(query, str) else {"text": query.text or ""})
                continue
            if encoder is not None and "image" not in encoder.modalities:
                raise XMRError(f"queries.{number}.image: this index's encoder ({encoder.type_name}) reads text "
                               "only; a query image would be ignored, so it is refused")
            image = _decode_image(query.image, number, self.limits.max_image_bytes, folder)
            items.append({"text": query.text or "", "images": [image]})
        return items

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not self._pending:
                    self._ready.wait()
                batch = self._next_batch()
            if batch:
                self._answer(batch)

    def _next_batch(self) -> list[_Job]:
        """The oldest waiting job and the waiting jobs with its k and knobs, up to ``batch_queries`` queries (a job
        larger than that goes alone); jobs whose waiter gave up (cancelled) are dropped. Call with the lock held."""
        batch: list[_Job] = []
        kept: list[_Job] = []
        queries = 0
        for job in self._pending:
            fits = not batch or (job.key == batch[0].key and queries + len(job.items) <= self.batch_queries)
            if not fits:
                kept.append(job)
            elif job.future.set_running_or_notify_cancel():
                batch.append(job)
                queries += len(job.items)
        self._pending = kept
        return batch

    def _answer(self, batch: list[_Job]) -> None:
        items = [item for job in batch for item in job.items]
        try:
            records = self.predictor.predict(items, k=batch[0].k, **batch[0].params).to_records()
        except Exception as error:
            if len(batch) == 1:
                batch[0].future.set_exception(error)
            else:
                for job in batch:  # find out whose it is: each alone
                    self._answer([job])
            return
        start = 0
        for job in batch:
            job.future.set_result(records[start:start + len(job.items)])
            start += len(job.items)


def _one_line(error: RequestValidationError) -> str:
    """Pydantic's error list as one line: ``field.path: message; ...``."""
    parts = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
        parts.append(f"{where or 'body'}: {problem.get('msg')}")
    return "; ".join(dict.fromkeys(parts))


def create_app(predictor: Predictor | str | Path, limits: Limits | None = None, batch_queries: int = 64,
               fast_queries: bool = False) -> FastAPI:
    """The service for a predictor (or a predictor folder, opened memory-mapped without re-verifying checksums:
    ``xmr serve`` verifies them once before it starts the workers). ``batch_queries``: queries one search may answer
    for the requests waiting together (see :class:`Searcher`); ``fast_queries``: encode queries with the folder's
    fast query encoder (``xmr fast-queries``)."""
    limits = limits or Limits()
    if not isinstance(predictor, Predictor):
        predictor = load_predictor(predictor, mmap=True, verify=False)
    if fast_queries:
        use_fast_queries(predictor)
    try:  # load the encoder now, so the first request does not pay for it
        getattr(predictor, "encoder", None)
    except XMRError:  # an index of precomputed vectors has none; its searches say so
        pass
    searcher = Searcher(predictor, limits, batch_queries)
    described = predictor.describe()
    app = FastAPI(title="xmr", version=__version__,
                  description=f"Top-k labels of {described['kind']} {described['path']} ({len(predictor)} labels)")

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next: Callable) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limits.max_body_bytes):
            return JSONResponse({"detail": f"request body of {declared} bytes, at most {limits.max_body_bytes}"},
                                status_code=413)
        if request.method == "POST" and declared is None:  # chunked: count what arrives
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > limits.max_body_bytes:
                    return JSONResponse({"detail": f"request body over {limits.max_body_bytes} bytes"},
                                        status_code=413)
            request._body = bytes(body)
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(error)}, status_code=422)

    @app.exception_handler(BadRequest)
    async def over_limits(request: Request, error: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=422)

    @app.exception_handler(XMRError)
    async def refused(request: Request, error: XMRError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=400)

    @app.post("/search", response_model=SearchResponse, responses={
        400: {"description": "the predictor refused the input"}, 413: {"description": "body too large"},
        422: {"description": "malformed request or over a limit"}, 504: {"description": "search timed out"}})
    async def search(request: SearchRequest) -> Any:
        """Top-k labels (catalogue ids, best first) for each query."""
        _check(request, limits)
        if has_images(request):  # decode them off the event loop
            job = await asyncio.get_running_loop().run_in_executor(None, searcher.submit, request)
        else:
            job = searcher.submit(request)
        try:
            results = await asyncio.wait_for(asyncio.wrap_future(job), limits.timeout_s)
        except asyncio.TimeoutError:
            return JSONResponse({"detail": f"search took longer than {limits.timeout_s} s"}, status_code=504)
        return {"results": results}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "labels": len(predictor)}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return {"xmr_version": __version__, "pid": os.getpid(), "predictor": described,
                "limits": asdict(limits), "started_at": started_at}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return PAGE

    started_at = time.time()
    return app
