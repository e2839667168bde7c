"""Start the service: verify the folder once, then uvicorn with ``workers`` processes that each open it
memory-mapped (the OS shares the mapped pages between them). With several workers uvicorn imports the app by name,
so the folder, the limits and the thread count travel to each worker in the ``XMR_SERVE`` environment variable."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from fastapi import FastAPI

from xmr.errors import XMRError
from xmr.predictor import load_predictor, use_fast_queries
from xmr.serve.app import Limits, create_app

ENVIRONMENT = "XMR_SERVE"
# uvicorn restarts a worker that misses its supervisor's ping for this long (its default, 5 s, killed busy workers
# of a loaded machine mid-request in the load test, dropping their connections)
HEALTHCHECK_S = 60


def app_from_environment() -> FastAPI:
    """The app factory each uvicorn worker calls (``xmr.serve.run:app_from_environment``)."""
    settings = json.loads(os.environ[ENVIRONMENT])
    if settings.get("threads"):
        import torch

        torch.set_num_threads(int(settings["threads"]))
    return create_app(settings["index"], Limits(**settings["limits"]), settings["batch_queries"],
                      settings["fast_queries"])


def serve(index: str | Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          limits: Limits | None = None, threads: int | None = None, log_level: str = "info",
          batch_queries: int = 64, fast_queries: bool = False) -> None:
    """Serve ``index`` (any predictor folder) until interrupted; ``batch_queries`` and ``fast_queries`` as in
    :func:`create_app`."""
    import uvicorn

    if workers < 1:
        raise XMRError(f"--workers must be at least 1, got {workers}")
    if threads is not None and threads < 1:
        raise XMRError(f"--threads must be at least 1, got {threads}")
    predictor = load_predictor(index, mmap=True, verify=True)  # checksums once here, not in every worker
    if fast_queries:
        use_fast_queries(predictor)  # a folder without one is refused before any worker starts
    os.environ[ENVIRONMENT] = json.dumps({"index": str(Path(index).resolve()), "threads": threads,
                                          "limits": asdict(limits or Limits()), "batch_queries": batch_queries,
                                          "fast_queries": fast_queries})
    uvicorn.run("xmr.serve.run:app_from_environment", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, timeout_graceful_shutdown=10, timeout_worker_healthcheck=HEALTHCHECK_S)
