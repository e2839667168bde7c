"""The FastAPI application of ``xmr serve``: ``POST /search``, ``GET /health``, ``GET /info``, the page at ``/``.

One app serves one predictor folder (label index, sharded index, ...), opened memory-mapped so that the worker
processes uvicorn starts share its pages instead of each holding a copy. Searches run in a worker thread, one at a
time per process (the encoder's tokenizer and the torch forward are not safe to share between threads); the event
loop stays free for ``/health`` and for refusing what is over the limits:

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from xmr._version import __version__
from xmr.errors import XMRError
from xmr.predictor import Predictor, load_predictor
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


class Searcher:
    """The predictor behind a lock: one search at a time in this process, requests' images as temporary files."""

    def __init__(self, predictor: Predictor, limits: Limits) -> None:
        self.predictor = predictor
        self.limits = limits
        self._lock = threading.Lock()

    def search(self, request: SearchRequest) -> list[list[dict[str, Any]]]:
        encoder = getattr(self.predictor, "encoder", None)
        with tempfile.TemporaryDirectory(prefix="xmr-serve-") as folder:
            items: list[Any] = []
            for number, query in enumerate(request.queries):
                if isinstance(query, str) or query.image is None:
                    items.append(query if isinstance(query, str) else {"text": query.text or ""})
                    continue
                if encoder is not None and "image" not in encoder.modalities:
                    raise XMRError(f"queries.{number}.image: this index's encoder ({encoder.type_name}) reads text "
                                   "only; a query image would be ignored, so it is refused")
                image = _decode_image(query.image, number, self.limits.max_image_bytes, Path(folder))
                items.append({"text": query.text or "", "images": [image]})
            with self._lock:
                return self.predictor.predict(items, k=request.k, **request.params).to_records()


def _one_line(error: RequestValidationError) -> str:
    """Pydantic's error list as one line: ``field.path: message; ...``."""
    parts = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
        parts.append(f"{where or 'body'}: {problem.get('msg')}")
    return "; ".join(dict.fromkeys(parts))


def create_app(predictor: Predictor | str | Path, limits: Limits | None = None) -> FastAPI:
    """The service for a predictor (or a predictor folder, opened memory-mapped without re-verifying checksums:
    ``xmr serve`` verifies them once before it starts the workers)."""
    limits = limits or Limits()
    if not isinstance(predictor, Predictor):
        predictor = load_predictor(predictor, mmap=True, verify=False)
    try:  # load the encoder now, so the first request does not pay for it
        getattr(predictor, "encoder", None)
    except XMRError:  # an index of precomputed vectors has none; its searches say so
        pass
    searcher = Searcher(predictor, limits)
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
        loop = asyncio.get_running_loop()
        try:
            results = await asyncio.wait_for(loop.run_in_executor(None, searcher.search, request), limits.timeout_s)
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
