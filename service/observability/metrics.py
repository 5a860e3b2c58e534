"""The API's Prometheus metrics: requests by route template, method and status; latency; datasets by
status and the generation queue's depth, read at scrape time.

Labels are route templates (``/v1/datasets/{dataset_id}``), never raw paths, and no label or sample
carries a key, purpose text or image data. Outside development ``/metrics`` answers only a scraper
that presents ``XRAYSYNTH_METRICS_TOKEN`` (and 404 when none is configured).
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import os
import time
from collections.abc import Iterator

import redis
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import queue
from service.datasets.models import Dataset, DatasetStatus
from service.db import get_sessionmaker
from service.errors import NotFound, Unauthorized, error_body
from service.observability.logs import REQUEST_ID_HEADER, close_context, open_context, request_id_from
from service.settings import get_settings

log = logging.getLogger("xraysynth.access")
# Several processes of one server share samples through files there; it must exist before the first metric.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
disable_created_metrics()  # *_created series double every family and no dashboard here reads them

REQUESTS = Counter("xraysynth_http_requests", "API requests answered, by route template, method and status",
                   ["route", "method", "status"])
LATENCY = Histogram("xraysynth_http_request_duration_seconds", "Time to answer an API request, by route template",
                    ["route", "method"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
UNMATCHED = "unmatched"  # every path no route matches shares one label: fuzzed paths add no series


def _route_of(scope: Scope) -> str:
    route = scope.get("route")
    if route is None and "endpoint" in scope and "app" in scope:
        # Plain Starlette routes (/openapi.json, /docs) do not record themselves in the scope.
        route = next((r for r in scope["app"].router.routes if r.matches(scope)[0] == Match.FULL), None)
    return getattr(route, "path", None) or UNMATCHED


@functools.lru_cache(maxsize=4096)
def _series(route: str, method: str, status: int) -> tuple:
    """The request counter's and latency histogram's samples for one label set, looked up once: the
    label sets are few (route templates, not paths) and `labels()` takes a lock and a search each time."""
    return REQUESTS.labels(route, method, str(status)), LATENCY.labels(route, method)


class ObservabilityMiddleware:
    """Per request: an X-Request-ID (the client's, if it is a plain token), bound to every log line
    and returned on the response; one access line; the request counter and latency histogram."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        given = headers.get(REQUEST_ID_HEADER.lower().encode())
        request_id = request_id_from(given.decode("latin-1") if given else None)
        status, started_response = 500, False
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status, started_response = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        token = open_context(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Answer here so the 500 carries the request id too. The context stays bound: the
            # server-error handler outside logs the failure (type only) with this request's ids, in
            # this request's own task.
            if not started_response:
                body = json.dumps(error_body("internal_error", "internal server error")).encode()
                await send_with_id({"type": "http.response.start", "status": 500, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send_with_id({"type": "http.response.body", "body": body})
            self._record(scope, status, started)
            raise
        self._record(scope, status, started)
        close_context(token)

    @staticmethod
    def _record(scope: Scope, status: int, started: float) -> None:
        took = time.perf_counter() - started
        route, method = _route_of(scope), scope["method"]
        if route != "/metrics":
            count, latency = _series(route, method, status)
            count.inc()
            latency.observe(took)
        log.info("%s %s %s %.1fms", method, route, status, took * 1000,
                 extra={"method": method, "route": route, "status": status, "duration_ms": round(took * 1000, 2)})


class StateCollector(Collector):
    """Gauges read from PostgreSQL and Redis when scraped, so every API process reports the same truth."""

    def describe(self) -> Iterator[Metric]:
        # Registering asks for the names; without this it would run collect(), a query, at import time.
        yield GaugeMetricFamily("xraysynth_datasets", "", labels=["status"])
        yield GaugeMetricFamily("xraysynth_dataset_images", "", labels=["status", "kind"])
        yield GaugeMetricFamily("xraysynth_queue_depth", "", labels=["queue"])

    def collect(self) -> Iterator[Metric]:
        yield from self._datasets()
        yield from self._queue()

    def _datasets(self) -> Iterator[Metric]:
        by_status = GaugeMetricFamily("xraysynth_datasets", "Datasets (requests) by status", labels=["status"])
        images = GaugeMetricFamily("xraysynth_dataset_images", "Images requested and generated so far, by status",
                                   labels=["status", "kind"])
        try:
            with get_sessionmaker()() as session:
                rows = session.execute(select(Dataset.status, func.count(), func.coalesce(func.sum(Dataset.total_images), 0),
                                              func.coalesce(func.sum(Dataset.done_images), 0))
                                       .group_by(Dataset.status)).all()
        except Exception as exc:  # noqa: BLE001 — a scrape during a database outage still answers, without these
            log.warning("metrics: datasets unavailable (%s)", type(exc).__name__)
            return
        seen = {DatasetStatus(r[0]).value: r for r in rows}
        for status in DatasetStatus:
            row = seen.get(status.value)
            by_status.add_metric([status.value], row[1] if row else 0)
            images.add_metric([status.value, "requested"], row[2] if row else 0)
            images.add_metric([status.value, "generated"], row[3] if row else 0)
        yield by_status
        yield images

    def _queue(self) -> Iterator[Metric]:
        url = get_settings().broker_url
        if not url.startswith(("redis://", "rediss://")):
            return
        depth = GaugeMetricFamily("xraysynth_queue_depth", "Tasks waiting in the generation queue (Redis)",
                                  labels=["queue"])
        try:
            client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
            # kombu keeps a queue as one list per priority step: the plain name and "<name>\x06\x16<n>".
            keys = [queue.QUEUE, *client.scan_iter(match=f"{queue.QUEUE}\x06\x16*", count=100)]
            waiting = sum(client.llen(k) for k in keys)
        except Exception as exc:  # noqa: BLE001 — a broker outage must not fail the whole scrape
            log.warning("metrics: queue depth unavailable (%s)", type(exc).__name__)
            return
        depth.add_metric([queue.QUEUE], waiting)
        yield depth


_state = StateCollector()
REGISTRY.register(_state)

router = APIRouter(include_in_schema=False)


def _exposition() -> bytes:
    # Several uvicorn workers (`serve --workers N`) share samples through files in this folder.
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        return generate_latest(REGISTRY)
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=folder)
    registry.register(_state)
    return generate_latest(registry)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    settings = get_settings()
    token = settings.metrics_token
    if token:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Unauthorized("metrics need `Authorization: Bearer <XRAYSYNTH_METRICS_TOKEN>`")
    elif not settings.is_development:
        raise NotFound("Not Found")
    return Response(_exposition(), media_type=CONTENT_TYPE_LATEST)


__all__ = ["LATENCY", "REQUESTS", "ObservabilityMiddleware", "router"]
