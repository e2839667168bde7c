"""``xmr serve``: an HTTP query service over any predictor folder (FastAPI app in ``app.py``, processes in
``run.py``, the browser page in ``page.py``). Needs the ``serve`` extra (fastapi, uvicorn)."""

from xmr.serve.app import Limits, create_app

__all__ = ["Limits", "create_app"]
