"""`lungjepa serve`: the prediction service over HTTP (Starlette on uvicorn), loopback by default.

Why Starlette and uvicorn: both are already installed with dagster-webserver (no new
dependency on a hospital box), they are the standard ASGI pair in Python, and the service
needs four JSON routes, not a framework. Handlers read the body on the event loop and run the
prediction in Starlette's thread pool, so /health answers while a prediction runs.

Routes:
- ``GET /health``          up, production version, models open
- ``GET /models``          the production pointer and each open model's card fields
- ``POST /predict``        one nodule: the fields of `lungjepa predict` as JSON
- ``POST /predict/batch``  LUNA16 rows (or an annotations.csv path) under one DICOM root

Every input `predict` refuses is answered 4xx with the same message: 400 for a body that is
not a JSON object, 422 for a field or a case that cannot be used, 403 for a folder outside
`--allow-dir` (when given), 404 and 405 for routes. A
model whose sha256 does not match its card is 503 (the server's state, not the request). The
request body is never logged; paths name folders on the server's own disk.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from models.onnx_runtime import ModelIntegrityError
from serving.errors import PredictionError
from serving.service import BATCH_FIELDS, CASE_FIELDS, PathNotAllowed, PredictionService

log = logging.getLogger("lungjepa.serve")
MAX_BODY_BYTES = 1 << 20  # a case is a few hundred bytes; a 1000-row batch well under this


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise HTTPException(413, f"request body over {MAX_BODY_BYTES} bytes")
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"body is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise HTTPException(400, "body must be a JSON object")
    return payload


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _answer(work: Callable[[Any], Any]) -> Callable[[Request], Awaitable[JSONResponse]]:
    """A POST route: JSON body in, ``work(body)`` in the thread pool, JSON out."""

    async def route(request: Request) -> JSONResponse:
        payload = await _json_body(request)
        try:
            result = await run_in_threadpool(work, payload)
        except PathNotAllowed as exc:
            return _error(403, str(exc))
        except PredictionError as exc:
            return _error(422, str(exc))
        except ModelIntegrityError as exc:
            log.error("refusing to serve a model: %s", exc)
            return _error(503, str(exc))
        return JSONResponse(result)

    return route


def create_app(service: PredictionService) -> Starlette:
    """The ASGI app answering from ``service``."""

    async def health(request: Request) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(service.health))

    async def models(request: Request) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(service.models))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        extra = {"fields": CASE_FIELDS if request.url.path == "/predict" else BATCH_FIELDS}
        return _error(exc.status_code, str(exc.detail), **(extra if exc.status_code == 400 else {}))

    def batch(payload: Any) -> dict[str, Any]:
        results = service.predict_batch(payload)
        return {"results": results, "failed": sum("error" in r for r in results)}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # uvicorn re-raises SIGTERM / SIGINT after its graceful shutdown, which ends the
        # process before the caller's `finally`: the DICOM workers are stopped here
        yield
        await run_in_threadpool(service.close)

    return Starlette(
        lifespan=lifespan,
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/models", models, methods=["GET"]),
            Route("/predict", _answer(service.predict), methods=["POST"]),
            Route("/predict/batch", _answer(batch), methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error},
    )


def serve(service: PredictionService, host: str, port: int) -> None:
    """Run until interrupted (uvicorn, one process; access log without bodies)."""
    import uvicorn

    uvicorn.run(create_app(service), host=host, port=port, log_level="info", access_log=True)
