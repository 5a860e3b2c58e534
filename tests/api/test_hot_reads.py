"""The polled reads served from the route table's head (service.hot_reads) answer exactly as the
FastAPI routes behind them: same statuses, bodies and headers for every kind of caller and request."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from starlette.routing import Match

from service.hot_reads import HotRoute

VOLATILE = {"x-request-id", "date"}


@pytest.fixture
def reference(clean):
    """The same app without its hot routes: every request goes through FastAPI's routing and dependencies."""
    from service.app import create_app

    app = create_app()
    app.router.routes[:] = [r for r in app.router.routes if not isinstance(r, HotRoute)]
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def served_by_hot_route(client: TestClient, method: str, path: str, query: bytes = b"") -> bool:
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "query_string": query, "headers": []}
    first = next(r for r in client.app.router.routes if r.matches(scope)[0] != Match.NONE)
    return isinstance(first, HotRoute) and first.matches(scope)[0] == Match.FULL


def answer(client: TestClient, method: str, path: str, headers: dict) -> tuple:
    r = client.request(method, path, headers=headers)
    return r.status_code, r.content, sorted((k, v) for k, v in r.headers.items() if k not in VOLATILE)


def test_hot_reads_answer_as_the_routes_they_stand_for(api, reference, make_user, researcher, admin, dataset_at):
    mine = dataset_at(researcher, "pending_review")
    theirs = dataset_at(make_user("researcher", "bob"), "ready")
    disabled = make_user("researcher", "eve")
    assert api.patch(f"/v1/accounts/{disabled.id}", json={"disabled": True}, headers=admin.headers).status_code == 200

    hot = [("GET", f"/v1/datasets/{mine}"), ("GET", f"/v1/datasets/{mine.hex}"),
           ("GET", f"/v1/datasets/{theirs}"), ("GET", f"/v1/datasets/{uuid.uuid4()}"), ("GET", "/v1/datasets")]
    for method, path in hot:
        assert served_by_hot_route(api, method, path), path
    # What the hot routes leave to FastAPI: other methods, query parameters, ids that are not UUIDs.
    assert not served_by_hot_route(api, "GET", "/v1/datasets", b"limit=1")
    assert not served_by_hot_route(api, "GET", "/v1/datasets/not-a-uuid")
    assert not served_by_hot_route(api, "HEAD", f"/v1/datasets/{mine}")

    callers = {"researcher": researcher.headers, "admin": admin.headers, "no key": {},
               "unknown key": {"Authorization": "Bearer xs_" + "A" * 43}, "basic": {"Authorization": "Basic YTpi"},
               "disabled": disabled.headers}
    requests = [*hot, ("GET", "/v1/datasets?limit=1"), ("GET", "/v1/datasets/not-a-uuid"),
                ("HEAD", f"/v1/datasets/{mine}"), ("DELETE", f"/v1/datasets/{mine}"), ("PUT", "/v1/datasets")]
    seen = set()
    for who, headers in callers.items():
        for method, path in requests:
            got, want = answer(api, method, path, headers), answer(reference, method, path, headers)
            assert got == want, (who, method, path)
            seen.add(got[0])
    assert {200, 401, 403, 404, 405, 422} <= seen  # the comparison covered every kind of answer


def test_hot_reads_are_counted_under_their_route_template(api, researcher, dataset_at):
    from prometheus_client import REGISTRY

    ds = dataset_at(researcher, "pending_review")
    labels = {"route": "/v1/datasets/{dataset_id}", "method": "GET", "status": "200"}
    before = REGISTRY.get_sample_value("xraysynth_http_requests_total", labels) or 0.0
    for _ in range(3):
        assert api.get(f"/v1/datasets/{ds}", headers=researcher.headers).status_code == 200
    assert REGISTRY.get_sample_value("xraysynth_http_requests_total", labels) == before + 3
    assert REGISTRY.get_sample_value("xraysynth_http_requests_total", {**labels, "route": "unmatched"}) is None
