"""The OpenAPI document says every answer: each error status in the one error shape, image routes as
images, and 405 answers whose Allow lists what the routes really offer. (The fuzzing job in
tests/fuzz checks the same against thousands of generated requests.)"""

from __future__ import annotations

import uuid

from tests.api.conftest import PURPOSE

ERROR_REF = "#/components/schemas/ErrorResponse"


def _operations(spec: dict):
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            yield method, path, op


def test_every_authenticated_operation_documents_its_error_statuses_in_the_one_shape(api):
    spec = api.get("/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # not what the API answers
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    checked = 0
    for method, path, op in _operations(spec):
        responses = op["responses"]
        if path == "/v1/health":
            assert {"200", "503"} <= set(responses) and "security" not in op
            continue
        assert op.get("security"), (method, path)
        expected = {"401", "403", "429", "503"}
        if "{" in path:
            expected |= {"404", "422"}
        if "requestBody" in op:
            expected |= {"400", "413", "422"}
        assert expected <= set(responses), (method, path, sorted(expected - set(responses)))
        for code, entry in responses.items():
            if code.startswith(("4", "5")):
                assert entry["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}, (method, path, code)
        checked += 1
    assert checked >= 20
    assert spec["paths"]["/v1/datasets/{dataset_id}/download"]["get"]["responses"].keys() >= {"409", "410"}
    assert "Retry-After" in spec["paths"]["/v1/datasets"]["get"]["responses"]["429"]["headers"]
    png = spec["paths"]["/v1/datasets/{dataset_id}/evidence/pairs.png"]["get"]["responses"]["200"]["content"]
    assert list(png) == ["image/png"]


def test_every_listed_route_rule_names_a_real_operation(api):
    from service.openapi import ROUTE_MEDIA, ROUTE_RULES, SAME_BODY_AS_200

    spec = api.get("/openapi.json").json()
    for method, path in [*ROUTE_RULES, *ROUTE_MEDIA, *SAME_BODY_AS_200]:
        assert method in spec["paths"].get(path, {}), f"{method.upper()} {path} is not a route any more"


def test_real_answers_are_the_documented_ones(api, researcher, admin, model, dataset_at):
    spec = api.get("/openapi.json").json()
    pending = dataset_at(researcher, status="pending_review")
    revoked = dataset_at(researcher, status="revoked")
    answers = [
        ("get", "/v1/datasets/{dataset_id}/download", api.get(f"/v1/datasets/{pending}/download", headers=researcher.headers)),
        ("get", "/v1/datasets/{dataset_id}/download", api.get(f"/v1/datasets/{revoked}/download", headers=researcher.headers)),
        ("post", "/v1/datasets/{dataset_id}/cancel", api.post(f"/v1/datasets/{revoked}/cancel", headers=researcher.headers)),
        ("get", "/v1/datasets/{dataset_id}", api.get(f"/v1/datasets/{uuid.uuid4()}", headers=researcher.headers)),
        ("get", "/v1/audit", api.get("/v1/audit", headers=researcher.headers)),
        ("get", "/v1/audit", api.get("/v1/audit")),
        ("post", "/v1/datasets", api.post("/v1/datasets", json={"conditions": {"Nope": 1}, "purpose": PURPOSE},
                                          headers=researcher.headers)),
        ("post", "/v1/datasets", api.post("/v1/datasets", content=b"\xff\xfe{", headers={
            **researcher.headers, "content-type": "application/json"})),
        ("post", "/v1/accounts", api.post("/v1/accounts", json={"name": researcher.name, "role": "researcher"},
                                          headers=admin.headers)),
    ]
    seen = set()
    for method, path, r in answers:
        documented = spec["paths"][path][method]["responses"]
        assert str(r.status_code) in documented, (method, path, r.status_code, r.text)
        assert set(r.json()) == {"error"}
        seen.add(r.status_code)
    assert {400, 401, 403, 404, 409, 410, 422} <= seen


def test_405_lists_every_method_the_routes_offer_for_the_path(api, researcher):
    spec = api.get("/openapi.json").json()
    for path, probe in (("/v1/accounts/{account_id}", f"/v1/accounts/{uuid.uuid4()}"), ("/v1/datasets", "/v1/datasets")):
        r = api.options(probe, headers=researcher.headers)
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        documented = {m.upper() for m in spec["paths"][path]}
        allowed = {m.strip() for m in r.headers["allow"].split(",")}
        assert allowed == documented | {"HEAD"}, (path, allowed)
    r = api.put(f"/v1/accounts/{uuid.uuid4()}", headers=researcher.headers)
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, PATCH"
