from __future__ import annotations

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from service import heartbeat, queue, storage
from service.coalesce import coalescer
from service.db import get_engine
from service.settings import get_settings

router = APIRouter(tags=["health"])

# The API itself needs these to answer; without a live worker it still takes requests (they wait in
# the queue), so a missing worker is reported as degraded, not as an API that is down.
REQUIRED = ("db", "broker", "storage")


def _check(fn) -> str:
    try:
        fn()
        return "ok"
    except Exception as exc:  # noqa: BLE001 — report which part is down, never its secrets
        return f"unavailable ({type(exc).__name__})"


def _db() -> None:
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))


def _worker() -> str:
    if not heartbeat.uses_redis(get_settings().broker_url):
        return "unknown (workers report only through a Redis broker)"
    try:
        return heartbeat.liveness().describe()
    except Exception as exc:  # noqa: BLE001 — the broker check names the outage; say why this is unknown
        return f"unknown ({type(exc).__name__})"


@router.get(
    "/v1/health",
    summary="Liveness of the API and the parts it needs",
    description="200 while the database, broker and storage answer (`status` is `degraded` when no "
                "generation worker is alive: requests are accepted and wait); 503 naming the failing part.",
)
async def health():
    # Probes that arrive together (monitors, load balancers, a flood) share one round of checks, never
    # one that started before they arrived (service.coalesce); each round runs in a worker thread.
    body, ok = await coalescer().read(("health",), lambda: anyio.to_thread.run_sync(_checks))
    return JSONResponse(body, status_code=200 if ok else 503)


def _checks() -> tuple[dict, bool]:
    parts = {"db": _check(_db), "broker": _check(queue.ping_broker), "storage": _check(storage.ping)}
    ok = all(parts[p] == "ok" for p in REQUIRED)
    parts["worker"] = _worker()
    return {"status": "ok" if ok and parts["worker"] == "ok" else "degraded", **parts}, ok
