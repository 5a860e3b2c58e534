from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from service import queue, storage
from service.db import get_engine

router = APIRouter(tags=["health"])


def _check(fn) -> str:
    try:
        fn()
        return "ok"
    except Exception as exc:  # report which part is down, never its secrets
        return f"unavailable ({type(exc).__name__})"


def _db() -> None:
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))


@router.get("/v1/health", summary="Liveness of the API and the parts it needs")
def health():
    parts = {"db": _check(_db), "broker": _check(queue.ping_broker), "storage": _check(storage.ping)}
    ok = all(v == "ok" for v in parts.values())
    body = {"status": "ok" if ok else "degraded", **parts}
    return JSONResponse(body, status_code=200 if ok else 503)
