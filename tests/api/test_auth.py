"""Who may call what: 401 for unknown/revoked keys, 403 for disabled accounts and for researchers on admin
routes, 429 with Retry-After — over the app's whole route list."""

from __future__ import annotations

import uuid

import pytest

ADMIN_ROUTES = [
    ("POST", "/v1/models/{model_id}/publish"),
    ("POST", "/v1/models/{model_id}/retire"),
    ("GET", "/v1/reviews"),
    ("POST", "/v1/datasets/{dataset_id}/reviews"),
    ("POST", "/v1/datasets/{dataset_id}/revoke"),
    ("POST", "/v1/datasets/{dataset_id}/retry"),
    ("GET", "/v1/datasets/{dataset_id}/evidence"),
    ("GET", "/v1/datasets/{dataset_id}/evidence/pairs.png"),
    ("GET", "/v1/datasets/{dataset_id}/evidence/preview.png"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/accounts"),
    ("POST", "/v1/accounts"),
    ("GET", "/v1/accounts/{account_id}"),
    ("PATCH", "/v1/accounts/{account_id}"),
    ("POST", "/v1/accounts/{account_id}/keys"),
    ("DELETE", "/v1/accounts/{account_id}/keys/{key_id}"),
]
RESEARCHER_ROUTES = [
    ("GET", "/v1/conditions"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"),
    ("GET", "/v1/datasets"),
    ("POST", "/v1/datasets"),
    ("GET", "/v1/datasets/{dataset_id}"),
    ("POST", "/v1/datasets/{dataset_id}/cancel"),
    ("GET", "/v1/datasets/{dataset_id}/download"),
    ("GET", "/v1/datasets/{dataset_id}/card"),
]
ALL_ROUTES = ADMIN_ROUTES + RESEARCHER_ROUTES


def _fill(path: str, **ids) -> str:
    defaults = {"model_id": uuid.uuid4(), "dataset_id": uuid.uuid4(), "account_id": uuid.uuid4(), "key_id": uuid.uuid4()}
    return path.format(**{**defaults, **ids})


def test_every_route_is_classified(infra):
    """A new route must be added to one of the lists above (and so to the auth tests)."""
    from service.app import create_app

    spec = create_app().openapi()
    routes = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops if p != "/v1/health"}
    assert routes == set(ALL_ROUTES)


@pytest.mark.parametrize("method,path", ADMIN_ROUTES, ids=lambda x: str(x))
def test_researcher_gets_403_on_admin_routes(api, researcher, model, request_dataset, counts, method, path):
    own = request_dataset(researcher)["id"]  # their own dataset: 403 is about the route, not the object
    url = _fill(path, dataset_id=own, model_id=model.id, account_id=researcher.id)
    before = counts()
    r = api.request(method, url, json={"decision": "approve", "reason": "x", "name": "evil", "role": "admin"},
                    headers=researcher.headers)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"
    assert counts() == before


# The two below loop over every route inside one test: one database setup instead of dozens.


def test_unknown_key_is_401_everywhere(api):
    for method, path in ALL_ROUTES:
        for headers in ({"Authorization": "Bearer xs_not-a-real-key"}, {}, {"Authorization": "Basic abc"}):
            r = api.request(method, _fill(path), headers=headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["error"]["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"


def test_disabled_account_is_403_everywhere(api, make_user, admin, model, request_dataset, counts):
    victim = make_user("researcher")
    own = request_dataset(victim)["id"]
    disabled_admin = make_user("admin")
    for user in (victim, disabled_admin):
        assert api.patch(f"/v1/accounts/{user.id}", json={"disabled": True}, headers=admin.headers).status_code == 200
    before = counts()
    for method, path in ALL_ROUTES:
        for user in (victim, disabled_admin):
            r = api.request(method, _fill(path, dataset_id=own, model_id=model.id), headers=user.headers,
                            json={"conditions": {"Mass": 1}, "purpose": "x" * 30})
            assert r.status_code == 403, (method, path, user.role, r.text)
            assert r.json()["error"]["code"] == "account_disabled"
    assert counts() == before
    # Enabled again, the same key works.
    api.patch(f"/v1/accounts/{victim.id}", json={"disabled": False}, headers=admin.headers)
    assert api.get(f"/v1/datasets/{own}", headers=victim.headers).status_code == 200


def test_revoked_key_is_401_and_other_keys_still_work(api, researcher, admin):
    account = api.get(f"/v1/accounts/{researcher.id}", headers=admin.headers).json()
    [key] = account["keys"]
    second = api.post(f"/v1/accounts/{researcher.id}/keys", headers=admin.headers).json()["key"]
    r = api.delete(f"/v1/accounts/{researcher.id}/keys/{key['id']}", headers=admin.headers)
    assert r.status_code == 200 and r.json()["revoked_at"]
    r = api.get("/v1/datasets", headers=researcher.headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert api.get("/v1/datasets", headers={"Authorization": f"Bearer {second}"}).status_code == 200


def test_rate_limit_is_429_with_retry_after(api, researcher, settings_env):
    settings_env(rate_limit="3/minute")
    for _ in range(3):
        assert api.get("/v1/datasets", headers=researcher.headers).status_code == 200
    r = api.get("/v1/datasets", headers=researcher.headers)
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(r.headers["retry-after"]) <= 61
