"""The two reads clients poll, served straight from the app's route table.

GET /v1/datasets/{id} and GET /v1/datasets are what every client polls while its dataset is made; under
load FastAPI's per-request work around them (its nested-router matching and dependency solving) cost
more CPU than the read itself. Each is also registered here as a plain Starlette route, first in the
table, whose endpoint calls the same authentication and the same route function; the FastAPI route
stays behind it, documents it in /openapi.json and serves whatever this one does not match (a list
with query parameters, a malformed id). Errors raised here go through the app's exception handlers,
so answers are the same byte for byte.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Scope

from service.datasets import views
from service.deps import bearer, current_reader


class HotRoute(Route):
    """GET only (no implicit HEAD, as on the FastAPI route); `path` is the FastAPI route's template,
    so metrics and logs label both the same; `plain_only`: no query string, or it does not match."""

    def __init__(self, template: str, pattern: str, endpoint: Callable[[Request], Awaitable[Response]],
                 plain_only: bool = False):
        super().__init__(pattern, endpoint, methods=["GET"], include_in_schema=False)
        self.methods, self.path, self.plain_only = {"GET"}, template, plain_only

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if self.plain_only and scope.get("query_string"):
            return Match.NONE, {}
        match, child = super().matches(scope)
        if match == Match.FULL:
            child["route"] = self  # as FastAPI records its routes: the metrics label, without a search
        return match, child


async def _status(request: Request) -> Response:
    caller = await current_reader(await bearer(request))
    return await views.get_dataset(request.path_params["dataset_id"], caller)


async def _list(request: Request) -> Response:
    caller = await current_reader(await bearer(request))
    return await views.list_datasets(caller, status=None, limit=views.LIST_LIMIT)


def install(app: FastAPI) -> None:
    app.router.routes[0:0] = [
        HotRoute("/v1/datasets/{dataset_id}", "/v1/datasets/{dataset_id:uuid}", _status),
        HotRoute("/v1/datasets", "/v1/datasets", _list, plain_only=True),
    ]
