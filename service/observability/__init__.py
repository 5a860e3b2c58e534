"""Operations: Prometheus metrics, request-scoped log lines, the X-Request-ID header."""

from __future__ import annotations

from fastapi import FastAPI

from service.observability.logs import configure_logging, lean_records
from service.observability.metrics import ObservabilityMiddleware, router


def install_observability(app: FastAPI) -> None:
    """Logs through one formatter, /metrics, and the request-id/metrics middleware (added last, so
    it is outermost and sees every answer, 413s and 500s included)."""
    configure_logging()
    lean_records()
    app.include_router(router)
    app.add_middleware(ObservabilityMiddleware)
