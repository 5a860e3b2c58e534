"""The OpenAPI document says every answer a route can give, in the one error shape (service/errors.py).

Statuses that follow from how a route is built are declared here once, for every route:
  - it authenticates (depends on the caller)  → 401, 403 (disabled account, wrong role), 429;
  - it reads the database or storage          → 503;
  - it has path parameters (an id)            → 404, 422;  query parameters → 422;
  - it takes a body                           → 400 (unreadable), 413, 422.
Statuses that come from a route's own rules (409 not ready, 410 revoked, …) and non-JSON bodies are
listed in ROUTE_RULES below (a test checks every entry names a real operation). 405 answers carry an
``Allow`` listing every method the routes offer for that path, not only the first route that matched.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.deps import current_reader
from service.errors import error_body


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. quota_exceeded")
    message: str = Field(description="what went wrong, for a person")
    field: str | None = Field(None, description="the request field at fault (validation problems)")


class ErrorResponse(BaseModel):
    """Every error the API answers, whatever the status."""

    error: ErrorDetail


_REF = "#/components/schemas/ErrorResponse"
DESCRIPTIONS = {
    400: "The body could not be read at all (e.g. it is not UTF-8)",
    401: "No API key, or an unknown or revoked one",
    403: "The account is disabled, or this route is not for its role",
    404: "No such resource (or not yours: someone else's looks like an unknown id)",
    405: "Method not allowed on this path (see the Allow header)",
    409: "Not possible in the resource's current state",
    410: "Gone: the release was revoked and its files deleted",
    413: "Request body too large",
    422: "Invalid request: the message names the field",
    429: "Rate limit of this API key exceeded (see Retry-After)",
    503: "A part the service needs (database, object storage, broker) is unavailable; try again",
}
_HEADERS = {
    429: {"Retry-After": {"description": "seconds until the limit resets", "required": True,
                          "schema": {"type": "integer"}}},
}


def errors(*codes: int) -> dict[int | str, dict]:
    """``responses=`` entries for these statuses, each with the one error schema."""
    out: dict[int | str, dict] = {}
    for code in codes:
        entry: dict = {"description": DESCRIPTIONS[code], "content": {"application/json": {"schema": {"$ref": _REF}}}}
        if code in _HEADERS:
            entry["headers"] = _HEADERS[code]
        out[code] = entry
    return out


# Every REST route depends on the caller (it also declares the bearer scheme in the document).
AUTHENTICATED = [Depends(current_reader)]


# (method, path template) -> statuses from the route's own domain rules.
ROUTE_RULES: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/v1/datasets/{dataset_id}/cancel"): (409,),  # not cancellable in its state
    ("get", "/v1/datasets/{dataset_id}/download"): (409, 410),  # not ready; revoked
    ("post", "/v1/datasets/{dataset_id}/revoke"): (409,),
    ("post", "/v1/datasets/{dataset_id}/retry"): (409,),
    ("post", "/v1/datasets/{dataset_id}/reviews"): (409,),  # not pending; already voted
    ("post", "/v1/models/{model_id}/publish"): (409,),  # not a draft; not publishable
    ("post", "/v1/models/{model_id}/retire"): (409,),
    ("post", "/v1/accounts"): (409,),  # name taken
    ("patch", "/v1/accounts/{account_id}"): (409,),  # disabling oneself
    ("delete", "/v1/accounts/{account_id}/keys/{key_id}"): (409,),  # already revoked
}
# (method, path template) -> {status: description} answered with the same body shape as the 200.
SAME_BODY_AS_200: dict[tuple[str, str], dict[int, str]] = {
    ("get", "/v1/health"): {503: "A part the API needs is down; the body names it"},
}
# (method, path template) -> the media type of the 200 body, where it is not JSON.
ROUTE_MEDIA: dict[tuple[str, str], str] = {
    ("get", "/v1/datasets/{dataset_id}/evidence/pairs.png"): "image/png",
    ("get", "/v1/datasets/{dataset_id}/evidence/preview.png"): "image/png",
}


def _derived(operation: dict) -> set[int]:
    """The statuses an operation can answer because of how it is built (see the module docstring)."""
    codes: set[int] = set()
    if operation.get("security"):
        codes |= {401, 403, 429, 503}
    where = {p.get("in") for p in operation.get("parameters", [])}
    if "path" in where:
        codes |= {404, 422}
    if where & {"query", "header"}:
        codes.add(422)
    if "requestBody" in operation:
        codes |= {400, 413, 422}
    return codes


def document_errors(schema: dict) -> None:
    """Add the derived and listed error statuses to every operation, and make 422 the one error shape
    (the framework's default 422 schema is not what the API answers)."""
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in _METHODS:
                continue
            responses = operation.setdefault("responses", {})
            media = ROUTE_MEDIA.get((method, path))
            if media and "200" in responses:
                responses["200"]["content"] = {media: {"schema": {"type": "string", "format": "binary"}}}
            for code, description in SAME_BODY_AS_200.get((method, path), {}).items():
                responses[str(code)] = {**responses.get("200", {}), "description": description}
            codes = _derived(operation) | set(ROUTE_RULES.get((method, path), ()))
            for code, entry in errors(*sorted(codes)).items():
                if str(code) == "422" or str(code) not in responses:
                    responses[str(code)] = entry
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    defs = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(defs.pop("$defs", {}))
    components["ErrorResponse"] = defs
    for unused in ("HTTPValidationError", "ValidationError"):  # in this order: the first refers to the second
        if f'"#/components/schemas/{unused}"' not in json.dumps(schema):
            components.pop(unused, None)


_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


@lru_cache(maxsize=8)
def _path_methods(paths_json: str) -> list[tuple[re.Pattern, frozenset[str]]]:
    out = []
    for template, operations in json.loads(paths_json).items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        methods = {m.upper() for m in operations if m in _METHODS}
        if "GET" in methods:
            methods.add("HEAD")  # every GET route answers HEAD
        out.append((re.compile(f"^{pattern}$"), frozenset(methods)))
    return out


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method the documented routes offer for this path (empty for undocumented paths)."""
    paths = app.openapi().get("paths", {})
    methods: set[str] = set()
    for pattern, offered in _path_methods(json.dumps(paths, sort_keys=True)):
        if pattern.match(path):
            methods |= offered
    return sorted(methods)


def install_openapi(app: FastAPI) -> None:
    """Declare the derived statuses and the error schema in the document; make 405 list every method."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            document_errors(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    async def method_not_allowed(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        documented = allowed_methods(request.app, request.url.path)
        allow = ", ".join(documented) if documented else (getattr(exc, "headers", None) or {}).get("Allow", "")
        return JSONResponse(error_body("method_not_allowed", f"{request.method} is not allowed here; allowed: {allow}"),
                            status_code=405, headers={"Allow": allow})

    app.add_exception_handler(405, method_not_allowed)
