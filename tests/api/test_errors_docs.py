"""One error shape everywhere, oversized bodies, OpenAPI examples."""

from __future__ import annotations

import pytest

from tests.api.conftest import PURPOSE


def _shape(body: dict) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) <= {"code", "message", "field"} and {"code", "message"} <= set(body["error"])


def test_unknown_path_and_method_use_the_error_shape(api, researcher):
    r = api.get("/v1/nope", headers=researcher.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    _shape(r.json())
    r = api.put("/v1/datasets", headers=researcher.headers)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in r.headers["allow"]
    _shape(r.json())


def test_malformed_json_and_wrong_types(api, researcher, model, counts):
    before = counts()
    r = api.post("/v1/datasets", content=b"{not json", headers={**researcher.headers, "content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "body"
    r = api.post("/v1/datasets", json=["a list"], headers=researcher.headers)
    assert r.status_code == 422
    _shape(r.json())
    r = api.get("/v1/datasets/not-a-uuid", headers=researcher.headers)
    assert r.status_code == 422 and r.json()["error"]["field"] == "dataset_id"
    assert counts() == before


def test_oversized_body_is_413_and_writes_nothing(api, researcher, model, counts):
    before = counts()
    r = api.post("/v1/datasets", json={"conditions": {"Mass": 1}, "purpose": "x" * 70_000}, headers=researcher.headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    # Streamed without a Content-Length: still refused.
    def chunks():
        for _ in range(20):
            yield b"x" * 8192
    r = api.post("/v1/datasets", content=chunks(), headers={**researcher.headers, "content-type": "application/json"})
    assert r.status_code == 413
    assert counts() == before


def test_internal_errors_do_not_leak(api, researcher, model, monkeypatch):
    from service.datasets import reads

    def boom(*a, **k):
        raise RuntimeError("secret detail /hospital/path")

    monkeypatch.setattr(reads, "_fetch_list", boom)
    r = api.get("/v1/datasets", headers=researcher.headers)
    assert r.status_code == 500 and r.json() == {"error": {"code": "internal_error", "message": "internal server error"}}
    assert "secret" not in r.text and "Traceback" not in r.text


def test_openapi_has_an_example_for_every_request_body(api):
    spec = api.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    bodies = 0
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            content = op.get("requestBody", {}).get("content", {}).get("application/json")
            if not content:
                continue
            bodies += 1
            schema = content["schema"]
            refs = [schema.get("$ref")] + [s.get("$ref") for s in schema.get("anyOf", [])]
            names = [r.rsplit("/", 1)[-1] for r in refs if r]
            assert names and all(schemas[n].get("examples") for n in names), (method, path)
    assert bodies >= 8
    assert api.get("/docs").status_code == 200


@pytest.mark.parametrize("example_index", [0])
def test_the_documented_dataset_example_is_valid(api, researcher, db, example_index):
    from tests.factories import make_model_version

    make_model_version(db, name="cxr-dcgan", version="1.0", conditions=["No Finding", "Mass"])
    db.commit()
    example = api.get("/openapi.json").json()["components"]["schemas"]["DatasetCreate"]["examples"][example_index]
    assert example["purpose"] != PURPOSE
    r = api.post("/v1/datasets", json=example, headers=researcher.headers)
    assert r.status_code == 202, r.text
