"""The FastAPI application: thin routers over domain modules. Never imports torch."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service import health, hot_reads
from service.console.render import error_page
from service.console.routes import install as install_console
from service.console.security import SecurityHeaders
from service.datasets import reads
from service.errors import error_body, install_error_handlers
from service.observability import install_observability
from service.openapi import AUTHENTICATED, install_openapi
from service.routers import ROUTERS
from service.settings import get_settings


class BodySizeLimit:
    """Refuse oversized bodies with 413 before they are read into memory (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, scope)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._refuse(send, scope)

    async def _refuse(self, send: Send, scope: Scope) -> None:
        import json

        if scope.get("path", "").startswith("/ui/"):
            # A browser posting a console form gets a page it can act on, not the API's JSON shape.
            page = error_page(Request(scope), 413, f"The form was larger than the {self.max_bytes // 1024} KiB the "
                              "console accepts, so nothing was saved. Go back, shorten the text (a purpose or "
                              "reason holds at most 2,000 characters) and send it again.")
            return await page(scope, None, send)
        body = json.dumps(error_body("payload_too_large", f"request body exceeds {self.max_bytes} bytes")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(BaseException):
    # BaseException, not Exception: FastAPI turns any Exception raised while it reads the body into a
    # 400 "error parsing the body", which would hide the 413 for streamed (chunked) bodies.
    pass


GC_YOUNG_THRESHOLD = 10_000


@asynccontextmanager
async def _lifespan(_: FastAPI) -> AsyncIterator[None]:
    # What exists now (modules, routes, schemas, the ORM's metadata) lives as long as the process:
    # kept out of the collector, each collection walks only what requests allocate.
    gc.freeze()
    # A request's objects are freed by reference counting when it ends; only cycles need the collector.
    # At the default threshold (700) a hundred requests in flight started a young collection every
    # eight requests: a sixth of a status read's CPU in the app. Raised, it runs on real growth only.
    threshold = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *threshold[1:])
    yield
    gc.set_threshold(*threshold)
    await reads.close()  # this loop's asyncio database connections


def create_app() -> FastAPI:

    settings = get_settings()
    app = FastAPI(
        lifespan=_lifespan,
        title="xraysynth",
        version="1",
        summary="Synthetic chest X-ray datasets, reviewed by the hospital, downloaded through signed URLs.",
        docs_url="/docs",
        openapi_url="/openapi.json",
        # Metrics are Prometheus and logs JSON lines (service.observability); FastAPI's native
        # OpenTelemetry would look for global providers on every request (3 us of a 250 us read).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(SecurityHeaders)
    app.include_router(health.router)
    for router in ROUTERS:
        app.include_router(router, dependencies=AUTHENTICATED)
    hot_reads.install(app)  # after the routers: its routes go first in the table
    install_console(app)  # the web console under /ui/, and / -> /ui/
    install_openapi(app)
    install_observability(app)  # last: the outermost middleware sees every answer
    return app
